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

import numpy as np

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
            labels=None, image=None, preprocess=None) -> Extraction | list[Extraction]:
    """Extractions of one text (an Extraction) or of several (a list). `model` is an oie-jax model
    directory, text or multimodal (loaded on each call, with its tokenizer), or a loaded model with
    `tokenizer` given (and `preprocess`, a multimodal one's image preparation). `labels` (label sets,
    `infer.constrain`) constrain decoding to the format, those labels and entities copied from the text;
    {} constrains the format and the copies only. `image` (a file, or an RGB uint8 array) is the picture
    a multimodal model reads every text with."""
    from oie_jax.infer.predict import generate_outputs, load_for_generation

    if task not in fmt.TASKS:
        raise UserError(f"unknown task {task!r}; the tasks are: {', '.join(fmt.TASKS)}")
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise UserError("extract needs non-empty texts")
    if isinstance(model, str | Path):
        model, own_tokenizer, preprocess = load_for_generation(model, dtype)
        tokenizer = tokenizer or own_tokenizer
    elif tokenizer is None:
        raise UserError("a loaded model needs its tokenizer (tokenizer=...)")
    images = None
    if image is not None:
        images = np.repeat(prepared_image(model, image, preprocess)[None], len(texts), axis=0)
    records = [Record(text=text, task=task) for text in texts]
    outputs, _ = generate_outputs(model, tokenizer, records, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  progress=progress, labels=labels, images=images)
    extractions = [read_output(text, task, output) for text, output in zip(texts, outputs)]
    return extractions[0] if single else extractions


def prepared_image(model, image, preprocess) -> np.ndarray:
    """A picture (file or RGB uint8 array) as a multimodal model's input, or a one-line error."""
    from oie_jax.data.images import ImageError, decode, prepare
    from oie_jax.models.multimodal import MultimodalLlama
    from oie_jax.models.multimodal_dir import CONFIG_FILE

    if not isinstance(model, MultimodalLlama):
        raise UserError("an image was given, but the model has no vision encoder (a multimodal model directory has "
                        f"{CONFIG_FILE})")
    if preprocess is None:
        raise UserError("a loaded multimodal model needs its image preparation (preprocess=...)")
    if isinstance(image, str | Path):
        try:
            image = decode(image)
        except ImageError as exc:
            raise UserError(str(exc), image) from None
    return prepare(np.asarray(image, np.uint8), preprocess)[0]
