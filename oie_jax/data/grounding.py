"""Grounded-NER examples for the grounding head: a record as the LLaMA's sequence (prompt + target, as
for text training), the tokens of each entity's item in the target, and its gold boxes; batches of them
with their prepared images.

An entity's tokens are found in the decoded target, the way they are found in a generated one: the
target is parsed (`format.parse` gives each item's characters) and a token belongs to an item when its
characters overlap it. Training and inference therefore read queries from the same places.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from oie_jax.data.format import Parsed, Record, parse
from oie_jax.data.images import ImageSource, to_prepared
from oie_jax.data.packing import EncodeStats, encode
from oie_jax.data.tokenizer import Tokenizer

GROUNDING_FIELDS = ("spans", "entity_mask", "gold_boxes", "gold_mask", "image", "image_ok")


def character_ends(tokenizer: Tokenizer, ids: Sequence[int]) -> list[int]:
    """For each token, where its text ends in `tokenizer.decode(ids)` (decoding each prefix: exact for
    any tokenizer, and cheap for outputs of a few dozen tokens)."""
    return [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]


def item_tokens(tokenizer: Tokenizer, ids: Sequence[int], task: str) -> tuple[Parsed, list[tuple[int, int]]]:
    """The parsed output of the tokens `ids` (a target or a generation, without EOS) and, per item, the
    token range [start, end) whose characters overlap the item's."""
    ends = character_ends(tokenizer, ids)
    parsed = parse(tokenizer.decode(ids), task)
    starts = [0] + ends[:-1]
    ranges = []
    for first, last in parsed.spans:
        inside = [k for k, (a, b) in enumerate(zip(starts, ends)) if a < last and b > first]
        ranges.append((inside[0], inside[-1] + 1) if inside else (0, 0))
    return parsed, ranges


@dataclasses.dataclass(frozen=True)
class GroundingExample:
    tokens: np.ndarray  # int32 (length,): BOS, prompt, target, EOS
    loss_mask: np.ndarray  # int32 (length,): 1 on the target
    spans: tuple[tuple[int, int], ...]  # per entity: its item's tokens [start, end) in `tokens`
    image: str
    boxes: tuple[tuple[tuple[int, int, int, int], ...], ...]  # per entity: gold boxes in original pixels


def example(record: Record, tokenizer: Tokenizer, max_length: int, stats: EncodeStats) -> GroundingExample | str:
    """The example of a record, or why there is none (counted in `stats.skipped` like text encoding)."""
    sequence = encode(record, tokenizer, max_length, stats)
    if sequence is None:
        return "target longer than max_length"
    start = int(np.argmax(sequence.loss_mask))
    parsed, ranges = item_tokens(tokenizer, sequence.tokens[start:-1].tolist(), record.task)
    if parsed.items != record.items:  # the tokenizer does not give the target back
        stats.skipped["target does not decode to itself"] += 1
        return "target does not decode to itself"
    grounding = record.grounding
    boxes = grounding.boxes if grounding is not None else ((),) * len(record.items)
    return GroundingExample(sequence.tokens, sequence.loss_mask, tuple((start + a, start + b) for a, b in ranges),
                            grounding.image if grounding is not None else record.id, boxes)


def batch_arrays(examples: Sequence[GroundingExample], images: ImageSource, length: int, entities: int,
                 boxes_per_entity: int, pad_id: int) -> dict:
    """Padded arrays of a batch: the text fields of `pipeline.BATCH_FIELDS` (one example per row) and
    GROUNDING_FIELDS, gold boxes in fractions of the prepared image. An image that cannot be read is
    reported by `images` and its row's grounding left out of the loss (`image_ok` false)."""
    n = len(examples)
    arrays = {
        "tokens": np.full((n, length), pad_id, np.int32),
        "loss_mask": np.zeros((n, length), np.int32),
        "segment_ids": np.zeros((n, length), np.int32),
        "positions": np.zeros((n, length), np.int32),
        "spans": np.zeros((n, entities, length), np.int8),
        "entity_mask": np.zeros((n, entities), bool),
        "gold_boxes": np.zeros((n, entities, boxes_per_entity, 4), np.float32),
        "gold_mask": np.zeros((n, entities, boxes_per_entity), bool),
        "image": np.zeros((n, *images.preprocess.size, 3), np.float32),
        "image_ok": np.zeros((n,), bool),
    }
    height, width = images.preprocess.size
    for row, ex in enumerate(examples):
        size = len(ex.tokens)
        arrays["tokens"][row, :size] = ex.tokens
        arrays["loss_mask"][row, :size] = ex.loss_mask
        arrays["segment_ids"][row, :size] = 1
        arrays["positions"][row, :size] = np.arange(size)
        image, placement, ok = images.load(ex.image)
        arrays["image"][row], arrays["image_ok"][row] = image, ok
        for e, ((start, end), gold) in enumerate(zip(ex.spans, ex.boxes)):
            arrays["spans"][row, e, start:end] = 1
            arrays["entity_mask"][row, e] = end > start
            for k, box in enumerate(gold):
                arrays["gold_boxes"][row, e, k] = to_prepared(box, placement) / [width, height, width, height]
                arrays["gold_mask"][row, e, k] = True
    return arrays


def batches(examples: Sequence[GroundingExample], order: Sequence[int], batch_size: int, images: ImageSource,
            length: int, entities: int, boxes_per_entity: int, pad_id: int) -> Iterator[dict]:
    """Batches of `examples` in `order`, the last one filled with empty rows (no loss, no entities)."""
    for first in range(0, len(order), batch_size):
        chosen = [examples[i] for i in order[first:first + batch_size]]
        arrays = batch_arrays(chosen, images, length, entities, boxes_per_entity, pad_id)
        missing = batch_size - len(chosen)
        if missing:
            arrays = {name: np.concatenate([value, np.zeros((missing, *value.shape[1:]), value.dtype)])
                      for name, value in arrays.items()}
            arrays["tokens"][-missing:] = pad_id
        yield arrays
