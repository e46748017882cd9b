"""Readers that turn corpus files into `Record`s, accounting for every record they cannot use.

Each reader yields a `Checked` record (the record and the problems found in it) or a `Problem`
(file, line, field, reason) for a value that is no record at all. `load` runs a reader over files,
directories and globs and keeps a per-file summary: read, kept, rejected and warned by reason.

Problems come in two weights. A rejection keeps a record out of training (empty text, a record the
format cannot render); a warning keeps it in and is counted (an entity that does not occur in its
text: translated corpora such as the MMM release hold some). Gold data for scoring keeps every
record that could be read (`keep_all`): a score never silently loses an example.
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
    rejects: bool = True  # False: a warning, the record is kept

    def __str__(self):
        return f"{self.path}:{self.line}: {self.field}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclasses.dataclass(frozen=True)
class Checked:
    """A record that was read, with what `checked` found wrong in it."""

    record: Record
    problems: tuple[Problem, ...] = ()


def missing_fields(value, path, line: int, fields: tuple[str, ...]) -> Problem | None:
    """The Problem of a JSON value that is not an object or lacks one of the string `fields`."""
    if not isinstance(value, dict):
        return Problem(str(path), line, "record", "not a JSON object")
    missing = next((f for f in fields if not isinstance(value.get(f), str)), None)
    return Problem(str(path), line, missing, "missing field") if missing else None


def checked(record: Record, path, line: int) -> Checked | Problem:
    """What every reader ends with. A Problem for values that are not text (no record to keep);
    else the record with its rejections (empty text, a record the format cannot carry) and warnings
    (an item value that does not occur in the text, compared after `format.normalize`)."""
    problem = functools.partial(Problem, str(path), line)
    if not all(isinstance(v, str) for v in (record.text, record.task, record.label, record.language, record.subset)):
        return problem("record", "not text", "text, task, label, language and subset must be strings")
    if not all(isinstance(item, tuple) and all(isinstance(v, str) for v in item) for item in record.items):
        return problem("items", "not text", "every item value must be a string")
    found = []
    if not record.text.strip():
        found.append(problem("text", "empty text"))
    if reason := fmt.unrenderable(record):
        found.append(problem("items", "unrenderable record", reason))
    elif (missing := fmt.missing_from_text(record)) is not None:
        found.append(problem("items", "entity not in text", repr(missing), rejects=False))
    return Checked(record, tuple(found))


@dataclasses.dataclass
class FileSummary:
    path: str
    read: int = 0
    kept: int = 0
    rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    warned: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def counted(counter: collections.Counter) -> str:
    return f"{sum(counter.values())} (" + (", ".join(f"{n} {reason}" for reason, n in counter.most_common()) or
                                          "none") + ")"


@dataclasses.dataclass
class LoadResult:
    records: list[Record]
    problems: list[Problem]  # rejections: records left out
    files: list[FileSummary]
    warnings: list[Problem] = dataclasses.field(default_factory=list)  # records kept with a warning

    def summary_lines(self) -> list[str]:
        lines = []
        for f in self.files:
            line = f"{f.path}: read {f.read}, kept {f.kept}, rejected {counted(f.rejected)}"
            lines.append(line + (f", warnings {counted(f.warned)}" if f.warned else ""))
        return lines


Reader = Callable[[Path], Iterator[Checked | Problem]]
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


def load(paths: Iterable[str], reader: Reader, suffixes: tuple[str, ...], strict: bool = False,
         keep_all: bool = False) -> LoadResult:
    """Every record the reader accepts, every problem it reports, and a summary per file. With
    `strict`, the first rejection is raised as a UserError (exit code 2). `keep_all` (gold data to
    score) keeps every record that could be read, its rejections counted as warnings, and makes
    `strict` fail on those too."""
    result = LoadResult([], [], [])
    for path in expand(paths, suffixes):
        summary = FileSummary(str(path))
        for value in reader(path):
            summary.read += 1
            problems = (value,) if isinstance(value, Problem) else value.problems
            rejected = isinstance(value, Problem) or (not keep_all and any(p.rejects for p in problems))
            for problem in problems:
                if strict and (problem.rejects or keep_all):
                    raise UserError(f"{problem} (--strict)")
            if rejected:
                first = next(p for p in problems if p.rejects)
                summary.rejected[first.reason] += 1
                result.problems.append(first)
                continue
            for problem in problems:
                summary.warned[problem.reason] += 1
                result.warnings.append(dataclasses.replace(problem, rejects=False))
            summary.kept += 1
            result.records.append(value.record)
        result.files.append(summary)
    return result
