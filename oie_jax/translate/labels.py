"""Rule-based label translation: tables (JSON data files users can extend) from a source
language's labels to each target language's. An unknown label is reported, never guessed."""

import dataclasses
import json
from importlib import resources

from etils import epath

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.errors import UserError

SECTIONS = ("text", "pair", "relation", "event")  # which label of a record each table covers


@dataclasses.dataclass(frozen=True)
class UnknownLabel:
    section: str
    label: str

    def __str__(self):
        return f"{self.section} label {self.label!r}"


@dataclasses.dataclass
class LabelTables:
    source: str  # language code of the labels the tables translate
    tables: dict[str, dict[str, dict[str, str]]]  # section -> source label -> target language -> label

    @classmethod
    def load(cls, source: str, extra=None) -> "LabelTables":
        """The built-in tables from `source` (ja ships), extended by a user's file `extra`."""
        builtin = resources.files("oie_jax.translate") / "tables" / f"{source}.json"
        if builtin.is_file():
            tables = cls(source, parse_tables(json.loads(builtin.read_text(encoding="utf-8")), builtin))
        elif extra is None:
            raise UserError(f"no built-in label tables from {source!r} (ja ships); write your own and pass it "
                            "with --labels")
        else:
            tables = cls(source, {section: {} for section in SECTIONS})
        return tables.extended(extra) if extra is not None else tables

    def extended(self, path) -> "LabelTables":
        """These tables with the entries of a user's file added (its entries win)."""
        path = epath.Path(path)
        try:
            extra = parse_tables(json.loads(path.read_text(encoding="utf-8")), path)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read label tables ({exc})", path) from None
        tables = {section: {**self.tables.get(section, {}), **extra.get(section, {})} for section in SECTIONS}
        return LabelTables(self.source, tables)

    def target_labels(self, section: str, target: str) -> set[str]:
        return {row[target] for row in self.tables.get(section, {}).values() if target in row}

    def translate(self, record: Record, target: str) -> Record | UnknownLabel:
        """The record with its labels in `target`; its text and entities are left as they are."""
        def one(section, label):
            if not label and section == "text":  # sources without a text label keep none
                return label
            row = self.tables.get(section, {}).get(label)
            if row is None or target not in row:
                raise _Unknown(UnknownLabel(section, label))
            return row[target]

        kind = fmt.TASKS[record.task]
        try:
            label = one("text", record.label)
            if kind in ("pairs", "grounded"):
                items = tuple((one("pair", item[0]), *item[1:]) for item in record.items)
            elif kind == "triples":
                items = tuple((item[0], one("relation", item[1]), item[2]) for item in record.items)
            else:
                items = tuple((one("event", item[0]), *item[1:]) for item in record.items)
        except _Unknown as unknown:
            return unknown.args[0]
        return dataclasses.replace(record, label=label, items=items, language=target)


class _Unknown(Exception):
    pass


def parse_tables(value, where) -> dict[str, dict[str, dict[str, str]]]:
    """The sections of a tables file, checked: {section: {label: {language: label}}}."""
    if not isinstance(value, dict):
        raise UserError("label tables must be a JSON object of sections", where)
    unknown = [key for key in value if key not in SECTIONS and not key.startswith("_")]
    if unknown:
        raise UserError(f"unknown section {unknown[0]!r} in label tables (sections: {', '.join(SECTIONS)})", where)
    tables = {}
    for section in SECTIONS:
        rows = value.get(section, {})
        if not isinstance(rows, dict) or not all(
                isinstance(row, dict) and all(isinstance(k, str) and isinstance(v, str) and v for k, v in row.items())
                for row in rows.values()):
            raise UserError(f"section {section!r} must map each label to {{language: label}} strings", where)
        tables[section] = rows
    return tables
