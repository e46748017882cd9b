"""Label sets: the text labels and item labels (relations for triples) that a task's outputs use, read from
the training data, saved with the run and every model exported from it (WORKDIR/labels.json,
MODEL_DIR/labels.json), and read back by whoever needs them (constrained decoding, `oie-jax eval`)."""

import dataclasses
import json
from collections.abc import Iterable

from etils import epath

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.errors import UserError

LABELS_FILE = "labels.json"  # in a run or model directory: the label sets of its training data


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """The labels a task's outputs may use; None = any label (not known)."""

    text: tuple[str, ...] | None = None
    items: tuple[str, ...] | None = None


def label_sets(records: Iterable[Record]) -> dict[str, LabelSet]:
    """The text labels and item labels (relations for triples) that `records` use, per task and per
    `LANGUAGE/TASK` (see `label_set_for`)."""
    text: dict[str, set] = {}
    items: dict[str, set] = {}
    for record in records:
        position = 1 if fmt.TASKS[record.task] == "triples" else 0
        keys = [record.task] + ([f"{record.language}/{record.task}"] if record.language else [])
        for key in keys:
            text.setdefault(key, set()).add(record.label)
            items.setdefault(key, set()).update(item[position] for item in record.items)
    return {key: LabelSet(tuple(sorted(text[key])), tuple(sorted(items[key]))) for key in text}


def label_set_for(sets: dict[str, LabelSet], task: str, language: str = "") -> LabelSet:
    """The labels of a record's language and task, else of its task in any language, else any label."""
    return sets.get(f"{language}/{task}") or sets.get(task) or LabelSet()


def save_label_sets(sets: dict[str, LabelSet], directory) -> None:
    value = {task: {"text": list(s.text), "items": list(s.items)} for task, s in sorted(sets.items())}
    (epath.Path(directory) / LABELS_FILE).write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n",
                                                     encoding="utf-8")


def copy_label_sets(workdir, model_dir) -> None:
    """A run's label sets into a model directory exported from it (when the run wrote them)."""
    source = epath.Path(workdir) / LABELS_FILE
    if source.is_file():
        (epath.Path(model_dir) / LABELS_FILE).write_bytes(source.read_bytes())


def load_label_sets(path) -> dict[str, LabelSet]:
    """Label sets from a labels.json ({TASK or LANGUAGE/TASK: {"text": [...], "items": [...]}}, either
    list optional: a missing one allows any label)."""
    path = epath.Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"not a label-set file ({exc})", path) from None
    return parse_label_sets(value, str(path))


def parse_label_sets(value, where: str) -> dict[str, LabelSet]:
    """Label sets from their JSON value (a labels.json's, or a server request's); errors name `where`."""
    try:
        sets = {task: LabelSet(tuple(entry["text"]) if entry.get("text") is not None else None,
                               tuple(entry["items"]) if entry.get("items") is not None else None)
                for task, entry in value.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise UserError(f"{where}: not label sets ({exc}); expected {{task: {{text: [...], items: [...]}}}}") from None
    unknown = [key for key in sets if key.rsplit("/", 1)[-1] not in fmt.TASKS]
    if unknown:
        raise UserError(f"{where}: unknown task {unknown[0]!r} in label sets")
    return sets


def model_label_sets(model_dir, path=None) -> dict[str, LabelSet]:
    """The label sets to constrain a model's outputs to: a file's (`path`), else those stored with the
    model (its training data's), else none known ({}: any label, the format and copies still hold)."""
    if path is not None:
        return load_label_sets(path)
    stored = epath.Path(model_dir) / LABELS_FILE
    return load_label_sets(stored) if stored.is_file() else {}
