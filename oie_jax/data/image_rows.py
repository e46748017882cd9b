"""Batches for a multimodal run (`train/multimodal.py`): records with their pictures, packed several to a
row like text (`packing.place`), each sequence holding its image placeholders after the BOS and each row
holding the images of its sequences in order, so that a row's k-th block of placeholders takes its k-th
image (`models/multimodal.splice_images`).

A row holds at most `images_per_row` records: the encoder reads that many images per row (blank after the
last record's), so the batch's shape is the same at every step. Epochs follow the text pipeline's rules
(`epoch_order`: mixing, shuffling, an exact resume); the images of each batch are read in parallel
through tf.data (`ImageSource`), only for this process's rows.
"""

from collections.abc import Iterator, Sequence

import numpy as np

from oie_jax.data.format import Record
from oie_jax.data.grounding import image_id
from oie_jax.data.images import ImageSource
from oie_jax.data.packing import EncodeStats, Rows, encode, layout, place
from oie_jax.data.pipeline import BATCH_FIELDS, EpochBatches, PipelineConfig, epoch_order, fill_last_batch, group_of
from oie_jax.data.tokenizer import Tokenizer
from oie_jax.errors import UserError


class ImageRowsPipeline(EpochBatches):
    """This process's rows of each global batch: BATCH_FIELDS and "image" (rows, images_per_row, height,
    width, 3). `placeholders` (image token id, count) as in `packing.encode`; `cfg.pack` false puts one
    record in each row whatever `images_per_row` says."""

    def __init__(self, records: Sequence[Record], tokenizer: Tokenizer, images: ImageSource, cfg: PipelineConfig,
                 placeholders: tuple[int, int], images_per_row: int = 1, rows: slice | None = None):
        if images_per_row < 1:
            raise UserError(f"images_per_row {images_per_row}: at least 1")
        self._start(cfg, rows)
        self.images = images
        self.images_per_row = images_per_row
        self.stats = EncodeStats()
        kept = [(sequence, image_id(r), group_of(r)) for r in records
                if (sequence := encode(r, tokenizer, cfg.seq_len, self.stats, placeholders)) is not None]
        if not kept:
            raise UserError("no record with its image placeholders fits the sequence length")
        self.sequences, self.image_ids, self.groups = (list(column) for column in zip(*kept))
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self._epoch: tuple[int, Rows, list[list[int]]] | None = None  # the last epoch laid out

    def epoch_rows(self, epoch: int) -> tuple[Rows, list[list[int]]]:
        """The epoch's rows (whole batches) and, per row, the indices of its records in order."""
        if self._epoch is None or self._epoch[0] != epoch:
            order = epoch_order(self.groups, self.cfg, epoch)
            most = self.images_per_row if self.cfg.pack else 1
            members = [[int(order[k]) for k in row]
                       for row in place([len(self.sequences[i].tokens) for i in order], self.cfg.seq_len, most=most)]
            rows = fill_last_batch(layout([[self.sequences[i] for i in row] for row in members], self.cfg.seq_len,
                                          self.pad_id), self.cfg.batch_size, self.pad_id)
            members += [[] for _ in range(len(rows.tokens) - len(members))]
            self._epoch = epoch, rows, members
        return self._epoch[1:]

    def describe(self) -> str:
        rows, members = self.epoch_rows(0)
        used = [row for row in members if row]
        skipped = sum(self.stats.skipped.values())
        return (f"{len(self.sequences):,} records of at most {self.cfg.seq_len} tokens with their image placeholders, "
                f"{len(self.sequences) / max(len(used), 1):.2f} per row (at most {self.images_per_row}), "
                f"{rows.efficiency:.0%} of the tokens used; {self.stats.prompts_cut:,} prompts cut; "
                f"{skipped:,} records skipped" + (f" ({dict(self.stats.skipped)})" if skipped else ""))

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.epoch_rows(epoch)[0].tokens) // self.cfg.batch_size

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        rows, members = self.epoch_rows(epoch)
        size = self.cfg.batch_size
        for step in range(start, self.steps_in_epoch(epoch)):
            mine = np.arange(step * size, (step + 1) * size)[self.rows]
            batch = {name: getattr(rows, name)[mine] for name in BATCH_FIELDS}
            batch["image"] = self.row_images([members[r] for r in mine])
            yield batch

    def row_images(self, members: list[list[int]]) -> np.ndarray:
        """(rows, images_per_row, height, width, 3): each row's records' images in order, zeros after."""
        out = np.zeros((len(members), self.images_per_row, *self.images.preprocess.size, 3), np.float32)
        ids = [self.image_ids[i] for row in members for i in row]
        if ids:
            (loaded,) = self.images.batches(ids, len(ids))
            slots = [(r, k) for r, row in enumerate(members) for k in range(len(row))]
            for (r, k), image in zip(slots, loaded["image"]):
                out[r, k] = image
        return out

    def _fingerprint_parts(self) -> Iterator[bytes]:
        yield repr((self.images_per_row, self.image_ids, self.groups)).encode()
        for sequence in self.sequences:
            yield sequence.tokens.tobytes() + sequence.loss_mask.tobytes()
