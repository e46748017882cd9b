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
from oie_jax.data.images import ImageSource
from oie_jax.data.packing import EncodeStats, encode
from oie_jax.data.pipeline import EpochBatches, PipelineConfig, epoch_order, group_of
from oie_jax.data.proposals import Proposals, in_fractions
from oie_jax.data.tokenizer import Tokenizer
from oie_jax.errors import UserError

GROUNDING_FIELDS = ("spans", "entity_mask", "gold_boxes", "gold_mask", "image", "image_ok")
PROPOSAL_FIELDS = ("proposals", "proposal_mask")  # with user proposals only
# What a batch of computed features keeps (`GroundingPipeline.cache_features`): the gold, the segment
# ids that count its tokens, and the proposals.
CACHED_FIELDS = ("segment_ids", "entity_mask", "gold_boxes", "gold_mask", "image_ok", *PROPOSAL_FIELDS)


def image_id(record: Record) -> str:
    """The id of a record's image: its grounding's, else (a tweet without boxes) the record's own."""
    return record.grounding.image if record.grounding is not None else record.id


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
                            image_id(record), boxes)


def batch_arrays(examples: Sequence[GroundingExample], images: ImageSource, length: int, entities: int,
                 boxes_per_entity: int, pad_id: int, proposals: Proposals | None = None) -> dict:
    """Padded arrays of a batch: the text fields of `pipeline.BATCH_FIELDS` (one example per row) and
    GROUNDING_FIELDS, gold boxes in fractions of the prepared image; with `proposals`, PROPOSAL_FIELDS
    too. An image that cannot be read is reported by `images` and its row's grounding left out of the
    loss (`image_ok` false)."""
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
    if proposals is not None:
        arrays["proposals"] = np.zeros((n, proposals.most, 4), np.float32)
        arrays["proposal_mask"] = np.zeros((n, proposals.most), bool)
    for row, ex in enumerate(examples):
        size = len(ex.tokens)
        arrays["tokens"][row, :size] = ex.tokens
        arrays["loss_mask"][row, :size] = ex.loss_mask
        arrays["segment_ids"][row, :size] = 1
        arrays["positions"][row, :size] = np.arange(size)
        image, placement, ok = images.load(ex.image)
        arrays["image"][row], arrays["image_ok"][row] = image, ok
        if proposals is not None:
            regions = proposals.prepared(ex.image, placement, images.preprocess.size)
            arrays["proposals"][row, :len(regions)] = regions
            arrays["proposal_mask"][row, :len(regions)] = True
        for e, ((start, end), gold) in enumerate(zip(ex.spans, ex.boxes)):
            arrays["spans"][row, e, start:end] = 1
            arrays["entity_mask"][row, e] = end > start
            if gold:
                arrays["gold_boxes"][row, e, :len(gold)] = in_fractions(np.array(gold), placement,
                                                                        images.preprocess.size)
                arrays["gold_mask"][row, e, :len(gold)] = True
    return arrays


def batches(examples: Sequence[GroundingExample], order: Sequence[int], batch_size: int, images: ImageSource,
            length: int, entities: int, boxes_per_entity: int, pad_id: int,
            proposals: Proposals | None = None) -> Iterator[dict]:
    """Batches of `examples` in `order`, the last one filled with empty rows (no loss, no entities); an
    empty `order` gives one batch of empty rows (a process that holds no row of a global batch)."""
    for first in range(0, max(len(order), 1), batch_size):
        chosen = [examples[i] for i in order[first:first + batch_size]]
        arrays = batch_arrays(chosen, images, length, entities, boxes_per_entity, pad_id, proposals)
        missing = batch_size - len(chosen)
        if missing:
            arrays = {name: np.concatenate([value, np.zeros((missing, *value.shape[1:]), value.dtype)])
                      for name, value in arrays.items()}
            arrays["tokens"][-missing:] = pad_id
        yield arrays


class GroundingPipeline(EpochBatches):
    """Batches of grounding examples with their images (and user proposals, when given), one example per
    row, in the order of the text pipeline's `epoch_order` (so mixing, shuffling and resuming follow the
    same rules); this process's rows of each global batch."""

    def __init__(self, records: Sequence[Record], tokenizer: Tokenizer, images: ImageSource, cfg: PipelineConfig,
                 rows: slice | None = None, proposals: Proposals | None = None):
        self._start(cfg, rows)
        self.images = images
        self.proposals = proposals
        self.stats = EncodeStats()
        made = [(example(r, tokenizer, cfg.seq_len, self.stats), group_of(r)) for r in records]
        kept = [(ex, group) for ex, group in made if isinstance(ex, GroundingExample)]
        if not kept:
            raise UserError("no grounding example: no record fits the sequence length")
        self.examples = [ex for ex, _ in kept]
        self.groups = [group for _, group in kept]
        self.entities = max(1, max(len(ex.spans) for ex in self.examples))
        self.boxes_per_entity = max(1, max((len(b) for ex in self.examples for b in ex.boxes), default=1))
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.cached: dict[str, np.ndarray] | None = None  # per example, once `cache_features` ran

    def cache_features(self, feature_fn, progress: bool = True) -> None:
        """Computes the features of every example once, `feature_fn(batch) -> {name: array}` over this
        process's rows, and from then on yields them with the gold fields in place of tokens and images:
        a frozen LLaMA and encoder give the same features at every epoch."""
        rows = self.rows.stop - self.rows.start
        parts: dict[str, list] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.examples), unit="tweet", desc="features of the frozen parts", dynamic_ncols=True)
        for batch in batches(self.examples, range(len(self.examples)), rows, self.images, self.cfg.seq_len,
                             self.entities, self.boxes_per_entity, self.pad_id, self.proposals):
            kept = {name: batch[name] for name in CACHED_FIELDS if name in batch} | dict(feature_fn(batch))
            for name, value in kept.items():
                parts.setdefault(name, []).append(np.asarray(value))
            if bar is not None:
                bar.update(min(rows, bar.total - bar.n))
        if bar is not None:
            bar.close()
        self.cached = {name: np.concatenate(values)[: len(self.examples)] for name, values in parts.items()}

    def describe(self) -> str:
        skipped = sum(self.stats.skipped.values())
        return (f"{len(self.examples):,} records of at most {self.cfg.seq_len} tokens, up to {self.entities} entities "
                f"and {self.boxes_per_entity} boxes each; {self.stats.prompts_cut:,} prompts cut; {skipped:,} records "
                "skipped" + (f" ({dict(self.stats.skipped)})" if skipped else ""))

    def steps_in_epoch(self, epoch: int) -> int:
        return -(-len(self.examples) // self.cfg.batch_size)

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        order = epoch_order(self.groups, self.cfg, epoch)
        size = self.cfg.batch_size
        rows = self.rows.stop - self.rows.start
        for step in range(start, self.steps_in_epoch(epoch)):
            mine = order[step * size:(step + 1) * size][self.rows]
            if self.cached is not None:
                filler = rows - len(mine)  # the last batch: empty rows, like `batches` adds
                yield {name: np.concatenate([values[mine], np.zeros((filler, *values.shape[1:]), values.dtype)])
                       for name, values in self.cached.items()}
                continue
            (batch,) = batches(self.examples, mine, rows, self.images, self.cfg.seq_len,
                               self.entities, self.boxes_per_entity, self.pad_id, self.proposals)
            self.images.check()
            yield batch

    def _fingerprint_parts(self) -> Iterator[bytes]:
        for ex in self.examples:
            yield ex.tokens.tobytes() + repr((ex.spans, ex.image, ex.boxes)).encode()
            if self.proposals is not None:
                yield self.proposals.boxes.get(ex.image, np.zeros((0, 4), np.float32)).tobytes()
