"""The filters a translated record passes, in order, each rejection with a stage and a reason code:

- untranslated: characters of the source script left in the translation (kana or kanji in
  English, kana in Chinese), in the text (`untranslated_text`) or an entity (`untranslated_entity`);
- alignment: a translated entity that does not occur in the translated text after `normalize`
  (`entity_not_in_text`);
- structure: the translated record against its source: same number of items (`item_count`),
  labels in the target label set (`label_not_in_target_set`), text present (`empty_text`) and
  renderable in the unified format (`unrenderable`).

Japanese-only kanji forms left in Chinese (図 for 图) are not detected: they share the Unicode block.
"""

import dataclasses

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.translate.labels import LabelTables
from oie_jax.translate.prompt import Translation

KANA = ((0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))
HAN = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF))
CJK_PUNCTUATION = ((0x3000, 0x303F),)  # 、。「」 and the ideographic space
# Per target language: the scripts whose characters mean that something was left untranslated.
FOREIGN_SCRIPTS = {"en": KANA + HAN + CJK_PUNCTUATION, "zh": KANA, "ja": ()}


@dataclasses.dataclass(frozen=True)
class Rejection:
    stage: str
    reason: str
    detail: str = ""

    def __str__(self):
        return f"{self.stage}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def foreign_characters(text: str, target: str) -> str:
    """The characters of `text`, each once, that a text in `target` should not hold."""
    ranges = FOREIGN_SCRIPTS.get(target, ())
    return "".join(dict.fromkeys(c for c in text if any(lo <= ord(c) <= hi for lo, hi in ranges)))


def untranslated(translation: Translation, target: str) -> Rejection | None:
    if left := foreign_characters(translation.text, target):
        return Rejection("untranslated", "untranslated_text", left[:10])
    for i, entity in enumerate(translation.entities, 1):
        if left := foreign_characters(entity, target):
            return Rejection("untranslated", "untranslated_entity", f"entity {i} {entity!r}: {left[:10]}")
    return None


def alignment(translation: Translation) -> Rejection | None:
    text = fmt.normalize(translation.text)
    for i, entity in enumerate(translation.entities, 1):
        if fmt.normalize(entity) not in text:
            return Rejection("alignment", "entity_not_in_text", f"entity {i} {entity!r}")
    return None


def structure(source: Record, translated: Record, tables: LabelTables, target: str) -> Rejection | None:
    if len(translated.items) != len(source.items):
        return Rejection("structure", "item_count", f"{len(source.items)} items became {len(translated.items)}")
    if not translated.text.strip():
        return Rejection("structure", "empty_text")
    labels = [("text", translated.label)] if translated.label else []
    kind = fmt.TASKS[translated.task]
    section = {"pairs": "pair", "grounded": "pair", "triples": "relation", "events": "event"}[kind]
    labels += [(section, item[1] if kind == "triples" else item[0]) for item in translated.items]
    for section, label in labels:
        if label not in tables.target_labels(section, target):
            return Rejection("structure", "label_not_in_target_set", f"{section} label {label!r}")
    if problem := fmt.unrenderable(translated):
        return Rejection("structure", "unrenderable", problem)
    return None


def assemble(labelled: Record, source_entities: tuple[str, ...], translation: Translation) -> Record:
    """The record with labels already in the target language (`labelled`), its text and entity values
    replaced by their translations."""
    mapping = dict(zip(source_entities, translation.entities))

    def item_of(item):
        spans = fmt.text_value_indices(labelled.task, len(item))
        return tuple(mapping[v] if i in spans else v for i, v in enumerate(item))

    return dataclasses.replace(labelled, text=translation.text, items=tuple(item_of(item) for item in labelled.items))


def check(source: Record, translated: Record, translation: Translation, tables: LabelTables,
          target: str) -> Rejection | None:
    """The first filter the translation fails, or None when it passes all."""
    return untranslated(translation, target) or alignment(translation) or structure(source, translated, tables,
                                                                                       target)
