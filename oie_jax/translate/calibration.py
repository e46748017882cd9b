"""Manual calibration: rejected records go to a review file (JSON Lines, source and translation side by
side, with the reason) that a person edits; `--calibrated FILE` merges the fixes into OUT/corrections.jsonl
before the run writes anything, and every later run of OUT applies them. A run rewrites review.jsonl
(what still needs a person) but never corrections.jsonl, so no fix is lost, even when the edited file
was OUT/review.jsonl itself.

A review row's `translation` holds what the pipeline had: the labels already translated, the text
and entities as the LLM gave them (the source's where it gave none). The person corrects `text`,
`label` and `items` and keeps the row; rows whose translation text is empty are skipped. Merged
fixes pass the same filters as LLM translations."""

import json

from etils import epath

from oie_jax.data.format import Record
from oie_jax.errors import UserError


def review_row(key: int, source: Record, target: str, rejection, translation: Record | None,
               answer: str | None) -> dict:
    def side(record: Record | None) -> dict | None:
        return None if record is None else {"text": record.text, "label": record.label,
                                            "items": [list(item) for item in record.items]}

    return {"key": key, "id": source.id, "language": target, "subset": source.subset, "task": source.task,
            "stage": rejection.stage, "reason": rejection.reason, "detail": rejection.detail, "source": side(source),
            "translation": side(translation), "answer": answer}


def write_review(rows: list[dict], path: epath.Path) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


CORRECTIONS_FILE = "corrections.jsonl"  # in OUT: every fix merged so far; runs read it, never rewrite it


def reviewed_rows(path) -> dict[tuple[int, str], tuple[str, dict]]:
    """(record key, target language) -> (file:line, row) of the rows of a review file that hold a fix."""
    path = epath.Path(path)
    if not path.is_file():
        raise UserError("no such calibration file", path)
    rows = {}
    for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{line}"
        try:
            row = json.loads(raw)
            key, target, fixed = row["key"], row["language"], row["translation"]
            row["source"]["text"]  # required: fixes_of compares it with the input's
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{where}: not a review row (needs key, language, source.text, translation)") from None
        if fixed and str(fixed.get("text", "")).strip():  # else not reviewed yet
            rows[(key, target)] = (where, row)
    return rows


def fixes_of(rows: dict, sources: list[Record], skip_absent: bool = False) -> dict[tuple[int, str], Record]:
    """The corrected records of reviewed rows. Rows must name a record of this input (same key and source
    text); anything else stops with file and line (`skip_absent`: keys past the input are left out)."""
    fixes = {}
    for (key, target), (where, row) in rows.items():
        if skip_absent and isinstance(key, int) and key >= len(sources):
            continue
        if not isinstance(key, int) or not 0 <= key < len(sources) or sources[key].text != row["source"]["text"]:
            raise UserError(f"{where}: key {key!r} does not name a record of this input with the same source text")
        fixed = row["translation"]
        try:
            items = tuple(tuple(str(v) for v in item) for item in fixed["items"])
            fixes[(key, target)] = Record(text=str(fixed["text"]), task=sources[key].task,
                                          label=str(fixed.get("label", "")), items=items, id=sources[key].id,
                                          language=target, subset=sources[key].subset)
        except (KeyError, TypeError):
            raise UserError(f"{where}: translation needs text, label and items") from None
    return fixes


def read_calibrated(path, sources: list[Record]) -> dict[tuple[int, str], Record]:
    """(record key, target language) -> the corrected record, from an edited review file."""
    return fixes_of(reviewed_rows(path), sources)


def merge_corrections(out, new_file, sources: list[Record]) -> dict[tuple[int, str], Record]:
    """The fixes of OUT/corrections.jsonl with those of `new_file` (an edited review file, or None) merged in,
    a newer fix of a record replacing the older; the merged file is written (to a temporary name, then
    renamed) before the run asks or writes anything else."""
    path = epath.Path(out) / CORRECTIONS_FILE
    rows = reviewed_rows(path) if path.exists() else {}
    fixes = fixes_of(rows, sources, skip_absent=True)
    if new_file is not None:
        new_rows = reviewed_rows(new_file)
        fixes.update(fixes_of(new_rows, sources))
        rows.update(new_rows)
        temporary = path.parent / (path.name + ".tmp")
        temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for _, row in rows.values()),
                             encoding="utf-8")
        temporary.replace(path)
    return fixes
