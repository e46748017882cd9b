"""The MMM release: JSON (list or lines) files of {input, output} or {instruction, input, output}
records, named like `Train_En_0_SCNM_dataset.json`, `test_Ch_5_TCREE_2k_clear2.json` or
`Train_Ch_MRE_OIEDataset.json` (TCONER). The file name gives the language and subset unless a row
names its own `language` and `subset`."""

import functools
import re
from collections.abc import Iterator
from pathlib import Path

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.data.sources import Checked, Problem, checked, missing_fields, split_from_name
from oie_jax.data.sources.jsonfile import read_json_records

LANGUAGE_CODES = {"en": "en", "ja": "ja", "jp": "ja", "ch": "zh", "zh": "zh", "cn": "zh"}
# The release numbers its sub-datasets 0-5 in the file names; TCONER files say "OIE".
SUBSET_NUMBERS = {"0": "SCNM", "1": "SCPOS:RW", "2": "SCPOS:Adj&N", "3": "SCPOS:Adj", "4": "SCPOS:N", "5": "TCREE"}
SUBSET_BY_TASK = {task: subset for subset, tasks in fmt.SUBSET_TASKS.items() for task in tasks if subset != "TCONER"}
NAME = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<lang>[A-Za-z]{2})_(?P<rest>.*)$")


def language_code(code):
    """Our language code for a release code (`En`, `Jp`, `Ch`, ...); anything else is kept as written
    (a value that is not text is then reported by the record check)."""
    return LANGUAGE_CODES.get(code.lower(), code) if isinstance(code, str) else code


def describe_file(path: Path) -> tuple[str, str, str]:
    """(split, language, subset) from a release file name; '' for what the name does not say."""
    match = NAME.match(path.stem)
    if not match:
        return "", "", ""
    split = split_from_name(path)
    language = LANGUAGE_CODES.get(match["lang"].lower(), "")  # a name's unknown code says nothing
    rest = match["rest"]
    if "OIE" in rest.upper():
        subset = "TCONER"
    else:
        number = re.match(r"(\d)_", rest)
        subset = SUBSET_NUMBERS.get(number.group(1), "") if number else ""
    return split, language, subset


def read(path: Path) -> Iterator[Checked | Problem]:
    _, language, file_subset = describe_file(path)
    yield from read_json_records(path, lambda value, path, line, name: to_record(value, path, line, name, language,
                                                                                 file_subset))


def to_record(value, path: Path, line: int, name: str, language: str, file_subset: str) -> Checked | Problem:
    if problem := missing_fields(value, path, line, ("input", "output")):
        return problem
    reject = functools.partial(Problem, str(path), line)
    source = fmt.parse_input(value["input"])
    instruction = str(value.get("instruction", "")).strip().lstrip("/")
    if source is None and instruction in fmt.TASKS:
        source = (value["input"], instruction)
    if source is None:
        word = value["input"].rsplit("/", 1)[-1][:40] if "/" in value["input"] else ""
        return reject("input", "unknown instruction word", repr(word))
    text, task = source
    parsed = fmt.parse(value["output"], task)
    if not parsed.well_formed:
        return reject("output", "malformed output", parsed.reason)
    # What the row says wins over what the file name implies (JSON lines with language and subset).
    record = Record(text=text, task=task, label=parsed.label, items=parsed.items,
                    language=language_code(value.get("language")) or language,
                    subset=value.get("subset") or file_subset or SUBSET_BY_TASK.get(task, ""),
                    id=str(value.get("id", name)))
    return checked(record, path, line)
