"""Readers that turn corpus files into `Record`s, accounting for every record they cannot use.

Each reader yields `Record`s and `Problem`s (file, line, field, reason); `load` runs a reader over
files, directories and globs and keeps a per-file summary: read, kept, rejected by reason.
"""

import collections
import dataclasses
import functools
import glob
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str
    reason: str  # a short category, counted in summaries
    detail: str = ""

    def __str__(self):
        return f"{self.path}:{self.line}: {self.field}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def missing_fields(value, path, line: int, fields: tuple[str, ...]) -> Problem | None:
    """The Problem of a JSON value that is not an object or lacks one of the string `fields`."""
    if not isinstance(value, dict):
        return Problem(str(path), line, "record", "not a JSON object")
    missing = next((f for f in fields if not isinstance(value.get(f), str)), None)
    return Problem(str(path), line, missing, "missing field") if missing else None


def checked(record: Record, path, line: int) -> Record | Problem:
    """The record, or the Problem that keeps it out: a value that is not text, empty text, a record
    the format cannot carry, an item value that is not in the text. Every reader ends with this."""
    problem = functools.partial(Problem, str(path), line)
    if not all(isinstance(v, str) for v in (record.text, record.task, record.label)):
        return problem("record", "not text", "text, task and label must be strings")
    if not all(isinstance(item, tuple) and all(isinstance(v, str) for v in item) for item in record.items):
        return problem("items", "not text", "every item value must be a string")
    if not record.text.strip():
        return problem("text", "empty text")
    if reason := fmt.unrenderable(record):
        return problem("items", "unrenderable record", reason)
    if (missing := fmt.missing_from_text(record)) is not None:
        return problem("items", "entity not in text", repr(missing))
    return record


@dataclasses.dataclass
class FileSummary:
    path: str
    read: int = 0
    kept: int = 0
    rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class LoadResult:
    records: list[Record]
    problems: list[Problem]
    files: list[FileSummary]

    def summary_lines(self) -> list[str]:
        lines = []
        for f in self.files:
            rejected = ", ".join(f"{n} {reason}" for reason, n in f.rejected.most_common()) or "none"
            lines.append(f"{f.path}: read {f.read}, kept {f.kept}, rejected {sum(f.rejected.values())} ({rejected})")
        return lines


Reader = Callable[[Path], Iterator[Record | Problem]]
SPLIT_WORDS = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "test": "test"}


def split_from_name(path: Path) -> str:
    """train, dev or test from a file name (`Train_En_0_SCNM_dataset.json`, `ner_train.json`,
    `dev.txt`); '' when the name says none."""
    words = re.split(r"[^a-z]+", path.stem.lower())
    return next((SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS), "")


def expand(paths: Iterable[str], suffixes: tuple[str, ...]) -> list[Path]:
    """Files named by paths, directories (searched recursively) and glob patterns."""
    files: list[Path] = []
    for spec in paths:
        path = Path(spec)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
        elif path.is_file():
            files.append(path)
        elif matches := sorted(glob.glob(spec, recursive=True)):
            files += [Path(m) for m in matches if Path(m).is_file()]
        else:
            raise UserError("no such file, directory or glob match", spec)
    if not files:
        raise UserError(f"no {'/'.join(suffixes)} files in {list(paths)}")
    return files


def load(paths: Iterable[str], reader: Reader, suffixes: tuple[str, ...], strict: bool = False) -> LoadResult:
    """Every record the reader accepts, every problem it reports, and a summary per file. With
    `strict`, the first problem is raised as a UserError (exit code 2)."""
    result = LoadResult([], [], [])
    for path in expand(paths, suffixes):
        summary = FileSummary(str(path))
        for value in reader(path):
            if isinstance(value, Problem):
                if strict:
                    raise UserError(f"{value} (--strict)")
                summary.rejected[value.reason] += 1
                result.problems.append(value)
            else:
                summary.kept += 1
                result.records.append(value)
            summary.read += 1
        result.files.append(summary)
    return result
