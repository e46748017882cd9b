"""Stockmark Japanese Wikipedia NER (`ner.json`: curid, text, entities[{name, span, type}]) as /NER
records of the Japanese SCNM subset. The source has no text-level label."""

import functools
from collections.abc import Iterator
from pathlib import Path

from oie_jax.data.format import Record
from oie_jax.data.sources import Checked, Problem, checked, missing_fields
from oie_jax.data.sources.jsonfile import read_json_records


def read(path: Path) -> Iterator[Checked | Problem]:
    yield from read_json_records(path, to_record)


def to_record(value, path: Path, line: int, name: str) -> Checked | Problem:
    if problem := missing_fields(value, path, line, ("text",)):
        return problem
    reject = functools.partial(Problem, str(path), line)
    text = value["text"]
    entities = value.get("entities")
    if not isinstance(entities, list):
        return reject("entities", "missing field")
    items = []
    for i, entity in enumerate(entities):
        field = f"entities[{i}]"
        if not isinstance(entity, dict) or not all(k in entity for k in ("name", "span", "type")):
            return reject(field, "missing field", "needs name, span and type")
        span = entity["span"]
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)):
            return reject(f"{field}.span", "malformed span", repr(span))
        if text[span[0]:span[1]] != entity["name"]:
            return reject(f"{field}.span", "span mismatch",
                           f"text[{span[0]}:{span[1]}] is {text[span[0]:span[1]]!r}, name is {entity['name']!r}")
        items.append((entity["type"], entity["name"]))
    record = Record(text=text, task="NER", items=tuple(items), id=str(value.get("curid", name)),
                    language="ja", subset="SCNM")
    return checked(record, path, line)
