"""JSON list and JSON Lines files read value by value with the line each value starts on, so that a
bad record is reported with its line and the rest of the file is still read where JSON allows."""

import json
from collections.abc import Iterator
from pathlib import Path

from oie_jax.data.sources import Problem

_decoder = json.JSONDecoder()


def read_text(path: Path) -> str | Problem:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return Problem(str(path), _line_of_byte(path.read_bytes(), exc.start), "file", "not UTF-8", str(exc))


def lines(text: str) -> list[str]:
    """Lines split at \n only: str.splitlines also splits at U+2028, U+0085 and form feeds, which
    JSON strings and tokens may hold raw."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_json_records(path: Path, to_record) -> Iterator:
    """to_record(value, path, line, name) for each value of a JSON file, and the file's own problems.
    `name` is the record's default id: `{file stem}:{record number}` (several records of a JSON list
    may share a line)."""
    number = 0
    for entry in iter_json_values(path):
        if isinstance(entry, Problem):
            yield entry
            continue
        number += 1
        yield to_record(entry[1], path, entry[0], f"{path.stem}:{number}")


def _line_of_byte(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def iter_json_values(path: Path) -> Iterator[tuple[int, dict] | Problem]:
    """(line, value) for each record of a JSON list or JSON Lines file; Problems for broken ones."""
    text = read_text(path)
    if isinstance(text, Problem):
        yield text
        return
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_list(path, text, len(text) - len(stripped) + 1)
        return
    for number, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield Problem(str(path), number, "json", "malformed JSON", exc.msg)


def _iter_list(path: Path, text: str, pos: int) -> Iterator[tuple[int, dict] | Problem]:
    line, counted = 1, 0

    def line_at(offset):
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            rest = _skip_space(text, pos + 1)
            if rest < len(text):
                yield Problem(str(path), line_at(rest), "json", "malformed JSON", "content after ']' unread")
            return
        try:
            value, end = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # A JSON list cannot be resynchronised after a syntax error: the rest of the file is lost,
            # and the problem says so.
            yield Problem(str(path), line_at(exc.pos), "json", "malformed JSON", f"{exc.msg}; rest of file unread")
            return
        yield line_at(pos), value
        pos = _skip_space(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            yield Problem(str(path), line_at(pos), "json", "malformed JSON", "expected ',' or ']'; rest of file unread")
            return


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
