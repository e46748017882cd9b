"""The grounding head of grounded multimodal NER: for each extracted entity, which region of the image
shows it, or that none does.

Queries: an entity's query is read from the LLaMA's final hidden states over the entity's item in the
output (`:type;text`, so the type is part of it): the mean over its tokens and the last one (which, in a
causal model, has seen the sentence and the whole item). Candidates: the vision encoder's grid cells,
each with a box it predicts (OWL-ViT style: a box per cell, no external detector), and/or boxes the user
gives (proposals, H-Index style), pooled from the grid with RoIAlign. Every (entity, candidate) pair
gets a score, and each entity one more for "not in the image".

Boxes are (x1, y1, x2, y2) in fractions of the prepared image (0..1).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from oie_jax.models import boxes as box_ops
from oie_jax.models.layers import param, project
from oie_jax.models.regions import roi_align

IOU_THRESHOLD = 0.5  # a candidate counts for a gold box when their IoU exceeds this (H-Index, GMNER)


@dataclasses.dataclass(frozen=True)
class GroundingConfig:
    query_size: int  # the LLaMA's hidden size
    vision_size: int  # the width of the encoder's grid features
    size: int = 256  # width of the space where queries meet regions
    cells: bool = True  # grid cells (with predicted boxes) are candidates
    region_bins: int = 2  # RoIAlign bins per side for proposals
    param_dtype: str = "float32"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> "GroundingConfig":
        return cls(**value)


class Grounded(NamedTuple):
    logits: jax.Array  # (batch, entities, candidates + 1): the last column is "not in the image"
    boxes: jax.Array  # (batch, candidates, 4): the cells' predicted boxes, then the proposals
    candidate_mask: jax.Array  # (batch, candidates) bool


def entity_queries(hidden: jax.Array, spans: jax.Array) -> jax.Array:
    """(batch, entities, 2 * hidden): mean and last of the hidden states (batch, length, hidden) over each
    entity's tokens, `spans` (batch, entities, length) marking them (an empty span gives zeros)."""
    spans = spans.astype(hidden.dtype)
    mean = jnp.einsum("bet,btd->bed", spans, hidden) / jnp.maximum(spans.sum(-1, keepdims=True), 1)
    positions = jnp.arange(spans.shape[-1])
    last = jnp.argmax(jnp.where(spans > 0, positions, -1), axis=-1)  # (batch, entities)
    last_hidden = jnp.take_along_axis(hidden, last[..., None], axis=1) * (spans.sum(-1, keepdims=True) > 0)
    return jnp.concatenate([mean, last_hidden], axis=-1)


def _logit(p):
    p = jnp.clip(p, 1e-4, 1 - 1e-4)
    return jnp.log(p) - jnp.log1p(-p)


def cell_priors(height: int, width: int) -> jax.Array:
    """(height * width, 4) (cx, cy, w, h) of each cell, row by row: the box a cell predicts before training."""
    cy, cx = jnp.meshgrid((jnp.arange(height) + 0.5) / height, (jnp.arange(width) + 0.5) / width, indexing="ij")
    size = jnp.broadcast_to(jnp.array([1 / width, 1 / height]), (height * width, 2))
    return jnp.concatenate([cx.reshape(-1, 1), cy.reshape(-1, 1), size], axis=-1)


def responsible_cells(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """The index of the cell that holds each box's centre (row by row), for boxes (..., 4)."""
    centre = box_ops.to_centre(boxes)[..., :2]
    column = jnp.clip(jnp.floor(centre[..., 0] * width), 0, width - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(centre[..., 1] * height), 0, height - 1).astype(jnp.int32)
    return row * width + column


class LayerNorm(nnx.Module):
    def __init__(self, size: int, cfg: GroundingConfig, axis: str, *, rngs: nnx.Rngs):
        self.scale = param(rngs, (size,), (axis,), cfg.param_dtype, scale=None)
        self.bias = param(rngs, (size,), (axis,), cfg.param_dtype, scale=0)

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(((x32 - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
        return (normed * self.scale[...] + self.bias[...]).astype(x.dtype)


class MLP(nnx.Module):
    """LayerNorm, then two layers with a GELU between them."""

    def __init__(self, size_in: int, size_out: int, cfg: GroundingConfig, in_axis: str, *, rngs: nnx.Rngs,
                 out_scale: float = 0.02):
        self.dtype = cfg.dtype
        self.norm = LayerNorm(size_in, cfg, in_axis, rngs=rngs)
        self.hidden = param(rngs, (size_in, cfg.size), (in_axis, "mlp"), cfg.param_dtype, size_in**-0.5)
        self.hidden_bias = param(rngs, (cfg.size,), ("mlp",), cfg.param_dtype, scale=0)
        self.out = param(rngs, (cfg.size, size_out), ("mlp", None), cfg.param_dtype, out_scale)
        self.out_bias = param(rngs, (size_out,), (None,), cfg.param_dtype, scale=0)

    def __call__(self, x):
        h = project(self.norm(x), self.hidden[...].astype(self.dtype)) + self.hidden_bias[...].astype(self.dtype)
        return project(jax.nn.gelu(h), self.out[...].astype(self.dtype)) + self.out_bias[...].astype(self.dtype)


class GroundingHead(nnx.Module):
    def __init__(self, cfg: GroundingConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.query = MLP(2 * cfg.query_size, cfg.size, cfg, "embed", rngs=rngs, out_scale=cfg.size**-0.5)
        self.region = MLP(cfg.vision_size, cfg.size, cfg, "channels", rngs=rngs, out_scale=cfg.size**-0.5)
        # Starts at the cell's own prior box (zero offsets), so early targets are the responsible cells.
        self.box = MLP(cfg.vision_size, 4, cfg, "channels", rngs=rngs, out_scale=0.0)
        self.absent = MLP(2 * cfg.query_size, 1, cfg, "embed", rngs=rngs)  # the "not in the image" score

    def __call__(self, queries: jax.Array, grid: jax.Array, proposals: jax.Array | None = None,
                 proposal_mask: jax.Array | None = None) -> Grounded:
        """queries (batch, entities, 2 * query_size) from `entity_queries`; grid (batch, h, w, vision_size);
        proposals (batch, regions, 4) in fractions of the image, `proposal_mask` (batch, regions) for the real ones."""
        batch, height, width, _ = grid.shape
        features, boxes, masks = [], [], []
        if self.cfg.cells:
            cells = grid.reshape(batch, height * width, -1)
            offsets = self.box(cells).astype(jnp.float32)
            predicted = jax.nn.sigmoid(_logit(cell_priors(height, width)) + offsets)
            features.append(cells)
            boxes.append(box_ops.from_centre(predicted))
            masks.append(jnp.ones((batch, height * width), bool))
        if proposals is not None and proposals.shape[1]:
            bins = (self.cfg.region_bins,) * 2
            scale = jnp.array([width, height, width, height], jnp.float32)  # fractions -> grid cells
            pooled = roi_align(grid, proposals * scale, bins, sampling_ratio=2).mean(axis=(2, 3))
            features.append(pooled.astype(grid.dtype))
            boxes.append(proposals.astype(jnp.float32))
            masks.append(proposal_mask.astype(bool))
        if not features:
            raise ValueError("no candidates: the head has cells off and no proposals were given")
        keys = self.region(jnp.concatenate(features, axis=1))
        q = self.query(queries)
        scores = jnp.einsum("bed,bcd->bec", q, keys, preferred_element_type=jnp.float32) * self.cfg.size**-0.5
        candidate_mask = jnp.concatenate(masks, axis=1)
        scores = jnp.where(candidate_mask[:, None, :], scores, -1e9)
        logits = jnp.concatenate([scores, self.absent(queries).astype(jnp.float32)], axis=-1)
        return Grounded(logits, jnp.concatenate(boxes, axis=1), candidate_mask)


class GroundingSums(NamedTuple):
    """Sums over a batch; divided by `entities` (KL) or `boxes` (L1, GIoU) they are means."""

    kl: jax.Array
    l1: jax.Array
    giou: jax.Array  # of 1 - GIoU
    entities: jax.Array
    boxes: jax.Array


def target_distribution(out: Grounded, gold_boxes: jax.Array, gold_mask: jax.Array, grid_shape: tuple[int, int],
                        cells: bool) -> jax.Array:
    """(batch, entities, candidates + 1): H-Index's target. A groundable entity spreads its mass over
    the candidates whose IoU with one of its gold boxes exceeds 0.5, in proportion to that IoU; the cell
    that holds a gold box's centre always counts, with weight 1, so that a target exists before the
    cells' boxes are learned. An entity without gold boxes puts all its mass on "not in the image"."""
    candidates = jax.lax.stop_gradient(out.boxes)
    overlaps = box_ops.iou(candidates[:, None, :, None, :], gold_boxes[:, :, None, :, :])  # (b, e, c, boxes)
    overlaps = jnp.where(gold_mask[:, :, None, :] & out.candidate_mask[:, None, :, None], overlaps, 0.0)
    best = overlaps.max(-1)
    weights = jnp.where(best > IOU_THRESHOLD, best, 0.0)
    if cells:
        height, width = grid_shape
        owners = responsible_cells(gold_boxes, height, width)  # (b, e, boxes)
        owned = (jax.nn.one_hot(owners, weights.shape[-1], dtype=bool) & gold_mask[..., None]).any(-2)
        weights = jnp.where(owned, 1.0, weights)
    in_image = gold_mask.any(-1)
    absent = jnp.where(in_image, 0.0, 1.0)
    weights = jnp.concatenate([jnp.where(in_image[..., None], weights, 0.0), absent[..., None]], axis=-1)
    return weights / jnp.maximum(weights.sum(-1, keepdims=True), 1e-9)


def grounding_losses(out: Grounded, gold_boxes: jax.Array, gold_mask: jax.Array, entity_mask: jax.Array,
                     grid_shape: tuple[int, int], cells: bool) -> GroundingSums:
    """Loss sums: KL(target || predicted) over candidates and "not in the image" per entity, and L1 and
    1 - GIoU between each gold box and the box its responsible cell predicts (cells only).

    gold_boxes (batch, entities, boxes, 4) in fractions of the image, gold_mask (batch, entities, boxes),
    entity_mask (batch, entities) for the real entities."""
    target = target_distribution(out, gold_boxes, gold_mask, grid_shape, cells)
    log_p = jax.nn.log_softmax(out.logits, axis=-1)
    kl = (jax.scipy.special.xlogy(target, target) - target * log_p).sum(-1)
    entity_mask = entity_mask.astype(jnp.float32)
    zero = jnp.float32(0)
    l1 = giou = zero
    box_mask = gold_mask & (entity_mask[..., None] > 0)
    if cells:
        height, width = grid_shape
        owners = responsible_cells(gold_boxes, height, width)  # (b, e, boxes)
        flat = owners.reshape(owners.shape[0], -1)
        predicted = jnp.take_along_axis(out.boxes, flat[..., None], axis=1).reshape(gold_boxes.shape)
        weight = box_mask.astype(jnp.float32)
        l1 = (jnp.abs(predicted - gold_boxes).sum(-1) * weight).sum()
        giou = ((1 - box_ops.generalized_iou(predicted, gold_boxes)) * weight).sum()
    return GroundingSums((kl * entity_mask).sum(), l1, giou, entity_mask.sum(), box_mask.sum().astype(jnp.float32))


class Choice(NamedTuple):
    in_image: jax.Array  # (batch, entities) bool
    box: jax.Array  # (batch, entities, 4): the chosen candidate's box (meaningless when not in the image)
    probability: jax.Array  # (batch, entities): of the choice


def choose(out: Grounded) -> Choice:
    """Each entity's most probable option: a candidate's box, or "not in the image"."""
    probabilities = jax.nn.softmax(out.logits, axis=-1)
    best = jnp.argmax(out.logits, axis=-1)
    candidates = out.boxes.shape[1]
    box = jnp.take_along_axis(out.boxes, jnp.minimum(best, candidates - 1)[..., None], axis=1)
    return Choice(best < candidates, box, jnp.take_along_axis(probabilities, best[..., None], axis=-1)[..., 0])
