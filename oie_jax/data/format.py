"""The MMM unified text-to-text format: the only module that knows its string syntax.

    input  = {text}/{task}
    output = {text label}/{task}/{items}

Items are written `:{field};{field}...`, one after another. Pairs are `(label, entity)`; relation
items are `(head, relation, tail)` triples; event items are `(event type, trigger, argument...)`,
two fields or more. Relation and event lists end with one more `:` (`:h;r;t:` for one triple), so
that a closing colon tells them apart from pairs. Grounded items (`Grounded NER`, GMNER as
generation) are `(label, entity, region)`, the region of the entity in the record's picture written
as `none` (not in the picture) or four integers `x1 y1 x2 y2`, the box's edges in hundredths of the
image's width and height (`render_region`). A real record:

    input : In 1953, filming of "On the Waterfront" starring Marlon Brando began, ... class./NER
    output: Literature/NER/:Person;Marlon Brando:Product Name;On the Waterfront:Person;Kazan:Person;Spiegel

Separators inside values. `:` starts an item and `;` separates fields, and neither is escaped by
the format. `parse` resolves them like this: an item label, relation or event type never holds `:`
or `;`; a `:`-separated piece that holds no `;` continues the last field of the item before it
(so "Star Wars: A New Hope" survives); in a pair, everything after the first `;` is the entity, and
in a triple everything after the second `;` is the tail (so `;` inside an entity or tail survives);
in a grounded item the label is before the first `;`, the region after the last one.
What stays ambiguous: a value in which a `:` is later followed by a `;` (": x;y" reads as a new
item), and a `:` in a grounded entity. `render` refuses such records, so `parse(render(r))` gives back
`r` whenever render succeeds.
"""

import dataclasses
import unicodedata
from typing import Literal

Kind = Literal["pairs", "triples", "events", "grounded"]

GROUNDED_TASK = "Grounded NER"  # GMNER as generation: each entity's region in the record's picture
# Instruction word -> item kind. Users may add their own with `register_task`.
TASKS: dict[str, Kind] = {
    "NER": "pairs",
    "Sentiment Relation Word": "pairs",
    "Sentiment Adj and N": "pairs",
    "Sentiment Adj": "pairs",
    "Sentiment N": "pairs",
    "Relation Extraction": "triples",
    "Event Extraction": "events",
    GROUNDED_TASK: "grounded",
}

# The 21 sub-datasets are these 7 in each language; TCREE holds relation and event records.
SUBSET_TASKS: dict[str, tuple[str, ...]] = {
    "SCNM": ("NER",),
    "SCPOS:RW": ("Sentiment Relation Word",),
    "SCPOS:Adj&N": ("Sentiment Adj and N",),
    "SCPOS:Adj": ("Sentiment Adj",),
    "SCPOS:N": ("Sentiment N",),
    "TCREE": ("Relation Extraction", "Event Extraction"),
    "TCONER": ("NER",),
}
LANGUAGES = ("en", "ja", "zh")
FIELDS: dict[Kind, int] = {"pairs": 2, "triples": 3, "events": 2, "grounded": 3}  # events: at least 2
REGION_NONE = "none"  # a grounded entity that is not in the picture
REGION_STEPS = 100  # a region's coordinates are integers 0..100: hundredths of the image's width or height


def register_task(word: str, kind: Kind) -> None:
    if not word or "/" in word or ":" in word or ";" in word:
        raise ValueError(f"an instruction word must be non-empty and hold no '/', ':' or ';': {word!r}")
    if kind not in FIELDS:
        raise ValueError(f"unknown item kind {kind!r}")
    TASKS[word] = kind


Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax in image pixels


@dataclasses.dataclass(frozen=True)
class Grounding:
    """Image regions of a record's items (multimodal NER): one tuple of boxes per item, empty when the
    item is not groundable."""

    image: str
    width: int
    height: int
    boxes: tuple[tuple[Box, ...], ...]


@dataclasses.dataclass(frozen=True)
class Record:
    text: str
    task: str
    label: str = ""  # text-level label; empty for sources that have none
    items: tuple[tuple[str, ...], ...] = ()
    id: str = ""
    language: str = ""
    subset: str = ""
    grounding: Grounding | None = None

    def to_json(self) -> dict:
        value = {"id": self.id, "language": self.language, "subset": self.subset, "task": self.task,
                 "text": self.text, "label": self.label, "items": [list(item) for item in self.items]}
        if self.grounding is not None:
            value["grounding"] = dataclasses.asdict(self.grounding)
        return value

    @classmethod
    def from_json(cls, value: dict) -> "Record":
        items = tuple(tuple(item) for item in value.get("items", ()))
        grounding = value.get("grounding")
        if grounding is not None:
            boxes = tuple(tuple(tuple(box) for box in item) for item in grounding["boxes"])
            grounding = Grounding(grounding["image"], grounding["width"], grounding["height"], boxes)
        return cls(text=value["text"], task=value["task"], label=value.get("label", ""), items=items,
                   id=value.get("id", ""), language=value.get("language", ""), subset=value.get("subset", ""),
                   grounding=grounding)


@dataclasses.dataclass(frozen=True)
class Parsed:
    label: str
    items: tuple[tuple[str, ...], ...]
    well_formed: bool
    reason: str = ""  # why it is not well formed
    spans: tuple[tuple[int, int], ...] = ()  # per item: where it lies in the output, from its ':' to its end


def text_values(task: str, item: tuple[str, ...]) -> tuple[str, ...]:
    """The values of an item that are spans of the text: the entity of a pair, the head and tail of a
    triple, the trigger and arguments of an event."""
    return tuple(item[i] for i in text_value_indices(task, len(item)))


def text_value_indices(task: str, length: int) -> tuple[int, ...]:
    """Where the text spans sit in an item of `length` fields (see `text_values`)."""
    kind = TASKS[task]
    return (0, 2) if kind == "triples" else (1,) if kind == "grounded" else tuple(range(1, length))


def missing_from_text(record: Record) -> str | None:
    """The first item value that should be a span of the text and is not, compared after `normalize`
    (full-width `Ｐａｒｉｓ` holds `Paris`); None when all are."""
    text = normalize(record.text)
    for item in record.items:
        for value in text_values(record.task, item):
            if normalize(value) not in text:
                return value
    return None


def render_input(text: str, task: str) -> str:
    return f"{text}/{task}"


def render(record: Record) -> tuple[str, str]:
    """(input, output) strings; ValueError for a record the format cannot carry unambiguously."""
    problem = unrenderable(record)
    if problem:
        raise ValueError(f"record {record.id or record.text[:40]!r}: {problem}")
    kind = TASKS[record.task]
    items = "".join(":" + ";".join(item) for item in record.items)
    if kind in ("triples", "events") and items:
        items += ":"
    return render_input(record.text, record.task), f"{record.label}/{record.task}/{items}"


def unrenderable(record: Record) -> str:
    """Why `render` would refuse the record ('' when it can render it)."""
    if record.task not in TASKS:
        return f"unknown instruction word {record.task!r}"
    if f"/{record.task}/" in record.label + "/":
        return f"text label {record.label!r} holds or ends with '/{record.task}'"
    kind = TASKS[record.task]
    for item in record.items:
        if len(item) != FIELDS[kind] and not (kind == "events" and len(item) >= 2):
            return f"item {item!r} does not have the fields of {kind}"
        if kind == "grounded":
            if any(":" in field for field in item) or ";" in item[0] + item[2]:
                return f"grounded item {item!r}: no field may hold ':', nor its label or region ';'"
            if problem := region_problem(item[2]):
                return f"grounded item {item!r}: {problem}"
            continue
        *fixed, last = item
        if any(":" in field or ";" in field for field in fixed):
            return f"item {item!r}: only its last field may hold ':' or ';'"
        if kind == "events" and ";" in last:
            return f"event item {item!r} holds ';'"
        if any(";" in piece for piece in last.split(":")[1:]):
            return f"item {item!r}: a ':' followed by ';' reads as a new item"
    return ""


def parse_input(text: str) -> tuple[str, str] | None:
    """(text, task) of an input string; None when it ends with no known instruction word."""
    for task in sorted(TASKS, key=len, reverse=True):  # "Sentiment Adj and N" before "Sentiment N"
        if text.endswith("/" + task):
            return text[: -len(task) - 1], task
    return None


def parse(output: str, task: str) -> Parsed:
    """The text label and items of a (possibly model-generated) output string. Never raises."""
    kind = TASKS.get(task)
    if kind is None:
        return Parsed("", (), False, f"unknown instruction word {task!r}")
    marker = f"/{task}/"
    cut = output.find(marker)
    if cut < 0:
        return Parsed("", (), False, f"no '{marker}' separator")
    label, body = output[:cut], output[cut + len(marker):]
    if not body:
        return Parsed(label, (), True)
    if not body.startswith(":"):
        return Parsed(label, (), False, "items do not start with ':'")
    reasons = []
    if kind == "grounded":
        return _parse_grounded(label, body, cut + len(marker))
    if kind in ("triples", "events"):
        if body.endswith(":") and len(body) > 1:
            body = body[:-1]
        else:
            reasons.append("item list does not end with ':'")
    items: list[list[str]] = []
    spans: list[list[int]] = []
    start = cut + len(marker)  # of the ':' before each piece
    for piece in body[1:].split(":"):
        end = start + 1 + len(piece)
        if ";" not in piece:
            if items:
                items[-1][-1] += ":" + piece  # a ':' inside the last value
                spans[-1][1] = end
            else:
                reasons.append(f"item {piece!r} has no ';'")
        else:
            fields = piece.split(";", -1 if kind == "events" else FIELDS[kind] - 1)
            if len(fields) < FIELDS[kind]:
                reasons.append(f"item {piece!r} does not have the fields of {kind}")
            else:
                items.append(fields)
                spans.append([start, end])
        start = end
    return Parsed(label, tuple(tuple(f) for f in items), not reasons, "; ".join(reasons),
                  tuple(tuple(span) for span in spans))


def _parse_grounded(label: str, body: str, start: int) -> Parsed:
    """Grounded items: `:label;entity;region` each, the entity everything between the first and last `;`."""
    items, spans, reasons = [], [], []
    for piece in body[1:].split(":"):
        end = start + 1 + len(piece)
        fields = piece.split(";")
        if len(fields) < 3:
            reasons.append(f"grounded item {piece!r} does not have label;entity;region")
        elif problem := region_problem(fields[-1]):
            reasons.append(f"grounded item {piece!r}: {problem}")
        else:
            items.append((fields[0], ";".join(fields[1:-1]), fields[-1]))
            spans.append((start, end))
        start = end
    return Parsed(label, tuple(items), not reasons, "; ".join(reasons), tuple(spans))


def render_region(box: tuple[float, float, float, float] | None, width: int, height: int) -> str:
    """A grounded item's region: `none`, or the box's edges in hundredths of the image's size, rounded."""
    if box is None:
        return REGION_NONE
    x1, y1, x2, y2 = (min(REGION_STEPS, max(0, round(v / size * REGION_STEPS)))
                      for v, size in zip(box, (width, height) * 2))
    return f"{x1} {y1} {x2} {y2}"


def region_steps(region: str) -> tuple[int, int, int, int] | None:
    """A region's hundredths (x1, y1, x2, y2), None for `none`; ValueError when it is neither (integers
    0..100, one space between them, no leading zeros)."""
    if region == REGION_NONE:
        return None
    values = region.split(" ")
    if len(values) == 4 and all(v.isascii() and v.isdigit() and (v == "0" or v[0] != "0") for v in values):
        numbers = tuple(map(int, values))
        if max(numbers) <= REGION_STEPS:
            return numbers
    raise ValueError(f"region {region!r} is neither {REGION_NONE!r} nor 'x1 y1 x2 y2' (integers 0..{REGION_STEPS})")


def region_problem(region: str) -> str:
    """Why `region` is not one ('' when it is)."""
    try:
        region_steps(region)
    except ValueError as exc:
        return str(exc)
    return ""


def region_box(region: str, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The box in image pixels of a region (`region_steps`); None for `none`."""
    steps = region_steps(region)
    return None if steps is None else tuple(v / REGION_STEPS * size for v, size in zip(steps, (width, height) * 2))


def normalize(value: str) -> str:
    """The form compared by evaluation: NFKC, whitespace runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", value).split())
