"""Box arithmetic shared by the grounding head, its loss and the GMNER metrics. Boxes are (x1, y1, x2, y2)
on continuous coordinates (pixels, or fractions of the image); all functions broadcast over leading axes."""

import jax
import jax.numpy as jnp


def area(box: jax.Array) -> jax.Array:
    return jnp.maximum(box[..., 2] - box[..., 0], 0) * jnp.maximum(box[..., 3] - box[..., 1], 0)


def _overlap_and_union(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    width = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
    height = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
    overlap = width * height
    return overlap, area(a) + area(b) - overlap


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, 0 where the denominator is 0 (with a gradient that stays finite)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1), 0.0)


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Intersection over union; 0 where the union has no area (a box without area overlaps nothing)."""
    overlap, union = _overlap_and_union(a, b)
    return _safe_divide(overlap, union)


def generalized_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """GIoU (Rezatofighi et al., 2019): IoU minus the part of the smallest enclosing box that the union
    leaves empty; in [-1, 1], and it still has a gradient when the boxes do not overlap."""
    overlap, union = _overlap_and_union(a, b)
    enclosing = ((jnp.maximum(a[..., 2], b[..., 2]) - jnp.minimum(a[..., 0], b[..., 0]))
                 * (jnp.maximum(a[..., 3], b[..., 3]) - jnp.minimum(a[..., 1], b[..., 1])))
    return _safe_divide(overlap, union) - _safe_divide(enclosing - union, enclosing)


def from_centre(box: jax.Array) -> jax.Array:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    centre, size = box[..., :2], box[..., 2:]
    return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def to_centre(box: jax.Array) -> jax.Array:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return jnp.concatenate([(box[..., :2] + box[..., 2:]) / 2, box[..., 2:] - box[..., :2]], axis=-1)
