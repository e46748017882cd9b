"""Extraction for users: text in, the text label, the items and where their values occur in the text.

    import oie_jax
    result = oie_jax.extract("path/to/model", "Marlon Brando starred in On the Waterfront.", task="NER")
    result.label, result.items, result.spans, result.well_formed

Spans: for each item, every item value that should be a span of the text (the entity of a pair,
head and tail of a triple, trigger and arguments of an event; `format.text_values`) maps to all its
non-overlapping occurrences, left to right, as (start, end) character offsets. A value that does not
occur verbatim maps to an empty list: the model may have paraphrased it or changed its spacing.
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.errors import UserError

Span = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Extraction:
    text: str
    task: str
    output: str  # what the model wrote
    label: str
    items: tuple[tuple[str, ...], ...]
    spans: tuple[dict[str, tuple[Span, ...]], ...]  # per item: each value that should be a span of the text
    well_formed: bool
    reason: str = ""  # why the output is not well formed

    def to_json(self) -> dict:
        return {"text": self.text, "task": self.task, "label": self.label,
                "items": [{"fields": list(item),
                           "spans": {value: [list(span) for span in found] for value, found in spans.items()}}
                          for item, spans in zip(self.items, self.spans)],
                "well_formed": self.well_formed, "reason": self.reason, "output": self.output}


def find_spans(text: str, value: str) -> tuple[Span, ...]:
    """Every non-overlapping occurrence of `value` in `text`, left to right."""
    if not value:
        return ()
    spans, start = [], text.find(value)
    while start >= 0:
        spans.append((start, start + len(value)))
        start = text.find(value, start + len(value))
    return tuple(spans)


def read_output(text: str, task: str, output: str) -> Extraction:
    parsed = fmt.parse(output, task)
    spans = tuple({value: find_spans(text, value) for value in fmt.text_values(task, item)} for item in parsed.items)
    return Extraction(text, task, output, parsed.label, parsed.items, spans, parsed.well_formed, parsed.reason)


def extract(model, texts: str | Sequence[str], task: str = "NER", *, tokenizer=None, max_new_tokens: int = 128,
            batch_size: int = 8, dtype: str | None = None, progress: bool = False,
            labels=None) -> Extraction | list[Extraction]:
    """Extractions of one text (an Extraction) or of several (a list). `model` is an oie-jax model
    directory (loaded on each call, with its tokenizer) or a loaded model with `tokenizer` given.
    `labels` (label sets, `infer.constrain`) constrain decoding to the format, those labels and
    entities copied from the text; {} constrains the format and the copies only."""
    from oie_jax.infer.predict import generate_outputs

    if task not in fmt.TASKS:
        raise UserError(f"unknown task {task!r}; the tasks are: {', '.join(fmt.TASKS)}")
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise UserError("extract needs non-empty texts")
    if isinstance(model, str | Path):
        from oie_jax.data.tokenizer import load_tokenizer
        from oie_jax.models.checkpoint import load_model

        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model, **({"dtype": dtype} if dtype else {}))
    elif tokenizer is None:
        raise UserError("a loaded model needs its tokenizer (tokenizer=...)")
    records = [Record(text=text, task=task) for text in texts]
    outputs, _ = generate_outputs(model, tokenizer, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  progress=progress, labels=labels)
    extractions = [read_output(text, task, output) for text, output in zip(texts, outputs)]
    return extractions[0] if single else extractions
