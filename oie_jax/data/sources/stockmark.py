"""Stockmark Japanese Wikipedia NER (`ner.json`: curid, text, entities[{name, span, type}]) as /NER
records of the Japanese SCNM subset. The source has no text-level label."""

from collections.abc import Iterator
from pathlib import Path

from oie_jax.data.format import Record
from oie_jax.data.sources import Problem
from oie_jax.data.sources.jsonfile import iter_json_values


def read(path: Path) -> Iterator[Record | Problem]:
    for entry in iter_json_values(path):
        if isinstance(entry, Problem):
            yield entry
            continue
        line, value = entry
        yield to_record(value, path, line)


def to_record(value, path: Path, line: int) -> Record | Problem:
    def problem(field, reason, detail=""):
        return Problem(str(path), line, field, reason, detail)

    if not isinstance(value, dict):
        return problem("record", "not a JSON object")
    text = value.get("text")
    if not isinstance(text, str):
        return problem("text", "missing field")
    if not text.strip():
        return problem("text", "empty text")
    entities = value.get("entities")
    if not isinstance(entities, list):
        return problem("entities", "missing field")
    items = []
    for i, entity in enumerate(entities):
        field = f"entities[{i}]"
        if not isinstance(entity, dict) or not all(k in entity for k in ("name", "span", "type")):
            return problem(field, "missing field", "needs name, span and type")
        span = entity["span"]
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)):
            return problem(f"{field}.span", "malformed span", repr(span))
        if text[span[0]:span[1]] != entity["name"]:
            return problem(f"{field}.span", "span mismatch",
                           f"text[{span[0]}:{span[1]}] is {text[span[0]:span[1]]!r}, name is {entity['name']!r}")
        items.append((entity["type"], entity["name"]))
    return Record(text=text, task="NER", items=tuple(items), id=str(value.get("curid", f"{path.stem}:{line}")),
                  language="ja", subset="SCNM")
