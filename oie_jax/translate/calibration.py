"""Manual calibration: rejected records go to a review file (JSON Lines, source and translation side by
side, with the reason) that a person edits; `--calibrated FILE` merges the fixes back on the next run.

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


def read_calibrated(path, sources: list[Record]) -> dict[tuple[int, str], Record]:
    """(record key, target language) -> the corrected record, from an edited review file. Rows must
    name a record of this input (same key and source text); anything else stops with file and line."""
    path = epath.Path(path)
    if not path.is_file():
        raise UserError("no such calibration file", path)
    fixes = {}
    for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{line}"
        try:
            row = json.loads(raw)
            key, target, fixed = row["key"], row["language"], row["translation"]
            source_text = row["source"]["text"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{where}: not a review row (needs key, language, source.text, translation)") from None
        if not isinstance(key, int) or not 0 <= key < len(sources) or sources[key].text != source_text:
            raise UserError(f"{where}: key {key!r} does not name a record of this input with the same source text")
        if not fixed or not str(fixed.get("text", "")).strip():
            continue  # not reviewed yet
        try:
            items = tuple(tuple(str(v) for v in item) for item in fixed["items"])
            record = Record(text=str(fixed["text"]), task=sources[key].task, label=str(fixed.get("label", "")),
                            items=items, id=sources[key].id, language=target, subset=sources[key].subset)
        except (KeyError, TypeError):
            raise UserError(f"{where}: translation needs text, label and items") from None
        fixes[(key, target)] = record
    return fixes
