"""Training batches: tokenized, packed (or padded) rows, mixed across subsets and languages, sharded
per JAX process, delivered as global `jax.Array`s, and resumable to the exact batch.

Each epoch is a pure function of (seed, epoch): the example order (with temperature-mixed group
sizes), then packing, then the cut into global batches. Every process derives the same epoch and
feeds only its own slice of each global batch through tf.data (prefetching in the background). The
iterator state is just (epoch, step), so a resumed run rebuilds the epoch and skips to the step.
"""

import collections
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator

import jax
import numpy as np

from oie_jax.data.format import Record
from oie_jax.data.packing import EncodeStats, Rows, Sequence, encode, layout, place
from oie_jax.data.tokenizer import Tokenizer
from oie_jax.errors import UserError

BATCH_FIELDS = ("tokens", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    seq_len: int = 512
    batch_size: int = 8  # global, across all processes
    pack: bool = True  # False: one sequence per row, padded
    seed: int = 0
    # Group sizes follow n ** (1 / temperature) per (subset, language): 1 keeps the natural
    # proportions, larger values flatten them toward uniform.
    mixture_temperature: float = 1.0
    shuffle: bool = True
    prefetch: int = 2

    @classmethod
    def for_evaluation(cls, seq_len: int, batch_size: int, pack: bool = True) -> "PipelineConfig":
        """Every example exactly once: no mixture, no shuffling."""
        return cls(seq_len=seq_len, batch_size=batch_size, pack=pack, mixture_temperature=1.0, shuffle=False)

    def __post_init__(self):
        if self.mixture_temperature <= 0 or self.seq_len < 2 or self.batch_size < 1:
            raise UserError(f"invalid pipeline config {self}: mixture_temperature > 0, seq_len >= 2 and "
                            "batch_size >= 1 are needed")


def group_of(record: Record) -> tuple[str, str]:
    return record.subset, record.language


def epoch_order(groups: list[tuple[str, str]], cfg: PipelineConfig, epoch: int) -> np.ndarray:
    """Example indices of one epoch: as many as there are examples, drawn per group in proportion to
    n ** (1 / T), each group cycling through its own shuffled examples."""
    rng = np.random.default_rng([cfg.seed, epoch])
    members = collections.defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    names = sorted(members)
    sizes = np.array([len(members[g]) for g in names], np.float64)
    if cfg.mixture_temperature == 1.0:  # natural proportions: every example exactly once
        counts = sizes.astype(int)
    else:
        weights = sizes ** (1.0 / cfg.mixture_temperature)
        quota = weights / weights.sum() * len(groups)
        counts = np.floor(quota).astype(int)
        counts[np.argsort(counts - quota, kind="stable")[: len(groups) - counts.sum()]] += 1  # largest remainders
    order = []
    for name, count in zip(names, counts):
        pool = np.array(members[name])
        cycles = [rng.permutation(pool) if cfg.shuffle else pool for _ in range(-(-count // len(pool)))]
        order.append(np.concatenate(cycles)[:count] if cycles else pool[:0])
    order = np.concatenate(order)
    return rng.permutation(order) if cfg.shuffle else np.sort(order, kind="stable")


class EpochBatches:
    """What the text and grounding pipelines share: this process's rows of each global batch, epochs
    that `_batches(epoch, start)` gives as a pure function of (epoch, start step), an iterator state of
    (epoch, step), and a fingerprint of what the batches depend on (the config but prefetch, and the
    bytes of `_fingerprint_parts()`) that a restore checks."""

    cfg: PipelineConfig

    def _start(self, cfg: PipelineConfig, rows: slice | None) -> None:
        """`rows`: this process's rows of each global batch (`sharding.process_row_blocks`); by default
        the process's equal share in process order."""
        self.cfg = cfg
        if rows is None:
            count = jax.process_count()
            if cfg.batch_size % count:
                raise UserError(f"batch_size {cfg.batch_size} does not split over {count} processes")
            share = cfg.batch_size // count
            rows = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
        if not 0 <= rows.start < rows.stop <= cfg.batch_size:
            raise UserError(f"rows {rows.start}:{rows.stop} are not rows of a batch of {cfg.batch_size}")
        self.rows = rows
        self.epoch, self.step = 0, 0

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        raise NotImplementedError

    def _fingerprint_parts(self) -> Iterator[bytes]:
        raise NotImplementedError

    def one_epoch(self, epoch: int = 0) -> Iterator[dict]:
        """This process's part of each batch of one epoch, leaving the iterator state alone (evaluation)."""
        return self._batches(epoch, 0)

    def __iter__(self):
        while True:
            for batch in self._batches(self.epoch, self.step):
                self.step += 1
                yield batch
            self.epoch, self.step = self.epoch + 1, 0

    # ---- resumable state ---------------------------------------------------------------------

    def fingerprint(self) -> str:
        """What the batches depend on: the config (but prefetch) and every encoded example."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:
        settings = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "prefetch"}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for part in self._fingerprint_parts():
            digest.update(part)
        return digest.hexdigest()[:16]

    def state(self) -> dict:
        """Where the next batch comes from; `restore` of it continues with exactly that batch."""
        return {"epoch": self.epoch, "step": self.step, "fingerprint": self.fingerprint()}

    def restore(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise UserError("the data state was saved for other records or another pipeline config; a resumed run "
                            "would not see the batches it would have seen")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


class Pipeline(EpochBatches):
    """Iterates this process's part of each global batch, as numpy dicts of BATCH_FIELDS. With
    `placeholders` (image token id, count), each sequence holds a multimodal model's image placeholders
    after its BOS (`packing.encode`)."""

    most_per_row: int | None = None  # sequences a packed row may hold; None: as many as fit

    def __init__(self, records: list[Record], tokenizer: Tokenizer, cfg: PipelineConfig, rows: slice | None = None,
                 placeholders: tuple[int, int] | None = None):
        self._start(cfg, rows)
        self.stats = EncodeStats()
        encoded = [(encode(r, tokenizer, cfg.seq_len, self.stats, placeholders), r) for r in records]
        kept = [(s, r) for s, r in encoded if s is not None]
        if not kept:
            raise UserError("no record fits the sequence length"
                            + (" with its image placeholders" if placeholders is not None else ""))
        self.sequences: list[Sequence] = [s for s, _ in kept]
        self.records: list[Record] = [r for _, r in kept]  # the record of each sequence
        self.groups = [group_of(r) for r in self.records]
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self._layout: tuple[int, Rows, list[list[int]]] | None = None  # the last epoch laid out

    def epoch_rows(self, epoch: int) -> Rows:
        return self.epoch_layout(epoch)[0]

    def epoch_layout(self, epoch: int) -> tuple[Rows, list[list[int]]]:
        """The epoch's rows, packed (or one sequence each) and filled to whole batches, and per row the
        indices of its sequences in order."""
        if self._layout is None or self._layout[0] != epoch:
            order = epoch_order(self.groups, self.cfg, epoch)
            most = self.most_per_row if self.cfg.pack else 1
            placed = place([len(self.sequences[i].tokens) for i in order], self.cfg.seq_len, most=most)
            if self.cfg.shuffle:  # placing starts rows with the longest sequences: the rows come in random order
                placed = [placed[r] for r in np.random.default_rng([self.cfg.seed, epoch, 1]).permutation(len(placed))]
            members = [[int(order[k]) for k in row] for row in placed]
            rows = fill_last_batch(layout([[self.sequences[i] for i in row] for row in members], self.cfg.seq_len,
                                          self.pad_id), self.cfg.batch_size, self.pad_id)
            members += [[] for _ in range(len(rows.tokens) - len(members))]
            self._layout = epoch, rows, members
        return self._layout[1:]

    def describe(self) -> str:
        """One line on what encoding did to the records: cut prompts and skipped records."""
        skipped = sum(self.stats.skipped.values())
        return (f"{len(self.sequences):,} sequences of at most {self.cfg.seq_len} tokens; {self.stats.prompts_cut:,} "
                f"prompts cut ({self.stats.prompt_tokens_cut:,} tokens); {skipped:,} records skipped"
                + (f" ({dict(self.stats.skipped)})" if skipped else ""))

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.epoch_rows(epoch).tokens) // self.cfg.batch_size

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        rows = self.epoch_rows(epoch)
        steps = len(rows.tokens) // self.cfg.batch_size
        local = {name: getattr(rows, name).reshape(steps, self.cfg.batch_size, -1)[:, self.rows]
                 for name in BATCH_FIELDS}
        import tensorflow as tf  # here: generating commands import this module and never need its 3 s import

        return tf.data.Dataset.from_tensor_slices(local).skip(start).prefetch(self.cfg.prefetch).as_numpy_iterator()

    def _fingerprint_parts(self) -> Iterator[bytes]:
        for sequence in self.sequences:
            yield sequence.tokens.tobytes() + sequence.loss_mask.tobytes()
        yield repr(self.groups).encode()


def fill_last_batch(rows: Rows, batch_size: int, pad_id: int) -> Rows:
    """Rows padded with empty rows (segment 0, no loss) to whole batches: no sequence is dropped."""
    missing = -len(rows.tokens) % batch_size
    if not missing:
        return rows
    empty = {name: np.zeros((missing, rows.tokens.shape[1]), np.int32) for name in BATCH_FIELDS}
    empty["tokens"][:] = pad_id
    return Rows(**{name: np.concatenate([getattr(rows, name), empty[name]]) for name in BATCH_FIELDS})


def to_global(batch: dict, sharding: jax.sharding.NamedSharding) -> dict:
    """This process's rows of a batch as parts of global arrays laid out by `sharding` (batch axis)."""
    return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in batch.items()}
