"""The LLM step: one request per record, with a one-shot example, asking for the translated text
and each entity's translation in a strict line layout; and the parser of the answer, which never
raises and says why an answer is unusable."""

import dataclasses
import json
import re
from importlib import resources

from etils import epath

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.errors import UserError

LANGUAGE_NAMES = {"en": "English", "ja": "Japanese", "zh": "Simplified Chinese"}
TEXT_LINE = re.compile(r"^\s*TEXT\s*:\s?(.*)$")
ENTITY_LINE = re.compile(r"^\s*ENTITY\s+(\d+)\s*:\s?(.*)$")


@dataclasses.dataclass(frozen=True)
class Translation:
    text: str
    entities: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Example:
    source: Translation
    target: Translation


@dataclasses.dataclass(frozen=True)
class Unusable:
    reason: str


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


def entities_of(record: Record) -> tuple[str, ...]:
    """The values of a record that are spans of its text, each once, in order of appearance."""
    return tuple(dict.fromkeys(value for item in record.items for value in fmt.text_values(record.task, item)))


def load_examples(source: str, targets, path=None) -> dict[str, Example]:
    """The one-shot example of each `source>target` pair: the built-in ones, replaced or added by a
    user's file of the same layout ({"ja>en": {text, entities, translation: {text, entities}}})."""
    builtin = resources.files("oie_jax.translate") / "tables" / "examples.json"
    values = _read_json(builtin)
    if path:
        values.update(_read_json(epath.Path(path)))
    examples = {}
    for target in targets:
        pair = f"{source}>{target}"
        if pair not in values:
            raise UserError(f"no one-shot example for {pair}; add one with --example FILE")
        value = values[pair]
        try:
            example = Example(Translation(value["text"], tuple(value["entities"])),
                              Translation(value["translation"]["text"], tuple(value["translation"]["entities"])))
        except (KeyError, TypeError):
            raise UserError(f"example {pair} needs text, entities and translation {{text, entities}}", path) from None
        if len(example.source.entities) != len(example.target.entities):
            raise UserError(f"example {pair}: entities and their translations differ in number", path)
        examples[target] = example
    return examples


def _read_json(path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read ({exc})", path) from None
    if not isinstance(value, dict):
        raise UserError("expected a JSON object keyed SOURCE>TARGET", path)
    return value


def _block(name: str, translation: Translation) -> str:
    entities = "\n".join(f"{i}. {entity}" for i, entity in enumerate(translation.entities, 1)) or "(none)"
    return f"{name} text: {translation.text}\nEntities:\n{entities}\n"


def _answer(translation: Translation) -> str:
    return "\n".join([f"TEXT: {translation.text}",
                      *(f"ENTITY {i}: {entity}" for i, entity in enumerate(translation.entities, 1))])


def build_prompt(source: Translation, source_language: str, target_language: str, example: Example) -> str:
    """The user message of one request."""
    src, tgt = language_name(source_language), language_name(target_language)
    return (f"Translate the {src} text into {tgt}, and translate each numbered entity the way it reads in your "
            f"translation, so that every translated entity occurs word for word in the translated text. "
            f"Answer with exactly these lines and nothing else: one line 'TEXT: <translated text>', then one "
            f"line 'ENTITY <number>: <translated entity>' per numbered entity.\n\n"
            f"Example\n{_block(src, example.source)}Answer:\n{_answer(example.target)}\n\n"
            f"Now translate this one\n{_block(src, source)}Answer:\n")


def parse_answer(answer, count: int) -> Translation | Unusable:
    """The translated text and `count` entities of an answer, or why it cannot be used."""
    if not isinstance(answer, str) or not answer.strip():
        return Unusable("empty answer")
    texts, entities = [], {}
    for line in answer.strip().splitlines():
        if match := TEXT_LINE.match(line):
            texts.append(match.group(1).strip())
        elif match := ENTITY_LINE.match(line):
            number, value = int(match.group(1)), match.group(2).strip()
            if not 1 <= number <= count:
                return Unusable(f"ENTITY {number} was not asked for ({count} entities)")
            if number in entities:
                return Unusable(f"ENTITY {number} given twice")
            if not value:
                return Unusable(f"ENTITY {number} is empty")
            entities[number] = value
    if not texts:
        return Unusable("no 'TEXT:' line")
    if len(texts) > 1:
        return Unusable("more than one 'TEXT:' line")
    if not texts[0]:
        return Unusable("the translated text is empty")
    missing = [n for n in range(1, count + 1) if n not in entities]
    if missing:
        return Unusable(f"no 'ENTITY {missing[0]}:' line" + (f" ({len(missing)} missing)" if len(missing) > 1 else ""))
    return Translation(texts[0], tuple(entities[n] for n in range(1, count + 1)))
