"""Unified records as JSON Lines (what `oie-jax data convert` writes, and the sample corpus)."""

import functools
from collections.abc import Iterator
from pathlib import Path

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.data.sources import Checked, Problem, checked, missing_fields
from oie_jax.data.sources.jsonfile import read_json_records


def read(path: Path) -> Iterator[Checked | Problem]:
    yield from read_json_records(path, to_record)


def to_record(value, path: Path, line: int, name: str) -> Checked | Problem:
    if problem := missing_fields(value, path, line, ("text", "task")):
        return problem
    reject = functools.partial(Problem, str(path), line)
    try:
        record = Record.from_json({"id": name, **value})
    except (KeyError, TypeError, ValueError) as exc:
        return reject("items", "malformed record", str(exc)[:80])
    if record.task not in fmt.TASKS:
        return reject("task", "unknown instruction word", repr(record.task))
    return checked(record, path, line)
