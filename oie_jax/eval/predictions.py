"""Prediction files (JSON Lines with `id` and `output`) and their pairing with gold records by id."""

import collections
import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from etils import epath

from oie_jax.data.format import Record
from oie_jax.data.sources.jsonfile import lines
from oie_jax.errors import UserError, shown
from oie_jax.files import location


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: str
    output: str
    line: int


def json_lines(path, layout: str) -> Iterator[tuple[int, str, dict, str]]:
    """(line number, "file:line", object, its id as a string) for each non-blank line of a prediction file;
    a file that is missing or not UTF-8, or a line that is not a JSON object with a string or integer `id`,
    is a UserError naming the file, line and field. `layout` shows the expected object in messages."""
    path = Path(path)
    if not path.is_file():
        raise UserError("predictions file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text ({exc})", path) from None
    for number, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise UserError(f"{where}: not a JSON object (expected {layout})")
        if "id" not in value:
            raise UserError(f"{where}: id: missing field")
        if isinstance(value["id"], bool) or not isinstance(value["id"], str | int):
            raise UserError(f"{where}: id: expected a string or an integer, got {json.dumps(value['id'])[:40]}")
        yield number, where, value, str(value["id"])


def read_predictions(path) -> list[Prediction]:
    """Every prediction of the file; a line that is not a JSON object with a string or integer `id` and a
    string `output` is a UserError naming the file, line and field."""
    predictions = []
    for number, where, value, key in json_lines(path, '{"id": ..., "output": ...}'):
        if "output" not in value:
            raise UserError(f"{where}: output: missing field")
        if not isinstance(value["output"], str):
            raise UserError(f"{where}: output: expected a string, got {json.dumps(value['output'])[:40]}")
        predictions.append(Prediction(key, value["output"], number))
    return predictions


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How predictions and gold records paired up."""

    gold: int
    predictions: int
    missing: tuple[str, ...]  # gold ids with no prediction: scored as empty outputs
    unmatched: tuple[Prediction, ...]  # predictions whose id no (remaining) gold record has: ignored
    repeated_gold_ids: int = 0  # gold ids that occur more than once: paired in file order

    def notes(self) -> list[str]:
        notes = []
        if self.missing:
            notes.append(f"{len(self.missing):,} of {self.gold:,} gold examples have no prediction and are scored as "
                         f"empty outputs (ids {shown(self.missing)})")
        if self.unmatched:
            notes.append(f"{len(self.unmatched):,} of {self.predictions:,} predictions match no gold id and are "
                         f"ignored ({shown(f'{p.id} (line {p.line})' for p in self.unmatched)})")
        if self.repeated_gold_ids:
            notes.append(f"{self.repeated_gold_ids:,} gold ids occur more than once; predictions with such an id pair "
                         "with them in file order")
        return notes


def pair(golds: Sequence[Record], predictions: Sequence[Prediction], path=None) -> tuple[list[str], Coverage]:
    """The output for each gold record ('' when it has no prediction). A repeated id pairs its
    occurrences in file order. Predictions of which none matches a gold id are a UserError: the files
    do not belong together."""
    waiting = collections.defaultdict(collections.deque)
    for prediction in predictions:
        waiting[prediction.id].append(prediction)
    outputs, missing = [], []
    for gold in golds:
        queue = waiting.get(str(gold.id))
        if queue:
            outputs.append(queue.popleft().output)
        else:
            outputs.append("")
            missing.append(str(gold.id))
    unmatched = tuple(sorted((p for queue in waiting.values() for p in queue), key=lambda p: p.line))
    if golds and predictions and len(unmatched) == len(predictions):
        raise UserError(f"none of the {len(predictions):,} predictions has the id of a gold record (first prediction "
                        f"id {predictions[0].id!r} on line {predictions[0].line}, first gold id {golds[0].id!r}): "
                        "are these predictions of this gold file?", path)
    counts = collections.Counter(str(g.id) for g in golds)
    coverage = Coverage(len(golds), len(predictions), tuple(missing), unmatched,
                        sum(1 for n in counts.values() if n > 1))
    return outputs, coverage


def write_predictions(path, golds: Sequence[Record], outputs: Sequence[str]) -> epath.Path:
    """One JSON line per example: id, subset, language, task and output (what `oie-jax score` reads)."""
    path = location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for gold, output in zip(golds, outputs):
            value = {"id": gold.id, "subset": gold.subset, "language": gold.language, "task": gold.task,
                     "output": output}
            f.write(json.dumps(value, ensure_ascii=False) + "\n")
    return path
