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
from oie_jax.data.pipeline import BATCH_FIELDS, Pipeline, PipelineConfig
from oie_jax.data.tokenizer import Tokenizer
from oie_jax.errors import UserError


class ImageRowsPipeline(Pipeline):
    """This process's rows of each global batch: BATCH_FIELDS and "image" (rows, images_per_row, height,
    width, 3). `placeholders` (image token id, count) as in `packing.encode`; `cfg.pack` false puts one
    record in each row whatever `images_per_row` says."""

    def __init__(self, records: Sequence[Record], tokenizer: Tokenizer, images: ImageSource, cfg: PipelineConfig,
                 placeholders: tuple[int, int], images_per_row: int = 1, rows: slice | None = None):
        if images_per_row < 1:
            raise UserError(f"images_per_row {images_per_row}: at least 1")
        super().__init__(list(records), tokenizer, cfg, rows, placeholders)
        self.most_per_row = images_per_row
        self.images = images
        self.image_ids = [image_id(r) for r in self.records]

    def describe(self) -> str:
        rows, members = self.epoch_layout(0)
        used = [row for row in members if row]
        skipped = sum(self.stats.skipped.values())
        return (f"{len(self.sequences):,} records of at most {self.cfg.seq_len} tokens with their image placeholders, "
                f"{len(self.sequences) / max(len(used), 1):.2f} per row (at most {self.most_per_row}), "
                f"{rows.efficiency:.0%} of the tokens used; {self.stats.prompts_cut:,} prompts cut; "
                f"{skipped:,} records skipped" + (f" ({dict(self.stats.skipped)})" if skipped else ""))

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        rows, members = self.epoch_layout(epoch)
        size = self.cfg.batch_size
        for step in range(start, self.steps_in_epoch(epoch)):
            mine = np.arange(step * size, (step + 1) * size)[self.rows]
            batch = {name: getattr(rows, name)[mine] for name in BATCH_FIELDS}
            batch["image"] = self.row_images([members[r] for r in mine])
            yield batch

    def row_images(self, members: list[list[int]]) -> np.ndarray:
        """(rows, images_per_row, height, width, 3): each row's records' images in order, zeros after."""
        out = np.zeros((len(members), self.most_per_row, *self.images.preprocess.size, 3), np.float32)
        ids = [self.image_ids[i] for row in members for i in row]
        if ids:
            (loaded,) = self.images.batches(ids, len(ids))
            slots = [(r, k) for r, row in enumerate(members) for k in range(len(row))]
            for (r, k), image in zip(slots, loaded["image"]):
                out[r, k] = image
        return out

    def _fingerprint_parts(self) -> Iterator[bytes]:
        yield from super()._fingerprint_parts()
        yield repr((self.most_per_row, self.image_ids)).encode()
