"""Features for image regions: RoIAlign (He et al., Mask R-CNN) over an encoder's grid features, for any
set of boxes per image, jit-friendly (fixed shapes, a fixed number of samples per bin).

Each output bin averages sampling_ratio x sampling_ratio bilinear samples. Bilinear weights and the
average over a bin are both separable in y and x, so a bin's value is (rows of weights over the grid's
height) x grid x (rows of weights over its width): two small matrix products per box, no gather.
Sampling follows torchvision's `roi_align` exactly (its `aligned` half-pixel shift, samples more than
one cell outside the grid count as zero, samples in that margin are clamped to the edge).
"""

import jax
import jax.numpy as jnp


def _bin_weights(start, size, bins: int, samples: int, length: int) -> jax.Array:
    """(..., bins, length): the average bilinear weights of a bin's samples over grid positions along
    one axis. start, size (...): the region along that axis in grid units."""
    bin_size = size / bins
    steps = (jnp.arange(bins)[:, None] * bin_size[..., None, None]
             + (jnp.arange(samples)[None, :] + 0.5) * (bin_size / samples)[..., None, None])
    coords = start[..., None, None] + steps  # (..., bins, samples)
    outside = (coords < -1.0) | (coords > length)
    coords = jnp.maximum(coords, 0.0)
    low = jnp.minimum(jnp.floor(coords).astype(jnp.int32), length - 1)
    high = jnp.minimum(low + 1, length - 1)
    coords = jnp.where(low >= length - 1, low.astype(coords.dtype), coords)  # at the last cell: all weight on it
    frac = coords - low
    weights = ((1 - frac)[..., None] * jax.nn.one_hot(low, length, dtype=coords.dtype)
               + frac[..., None] * jax.nn.one_hot(high, length, dtype=coords.dtype))
    weights = jnp.where(outside[..., None], 0.0, weights)
    return weights.mean(axis=-2)


def roi_align(grid: jax.Array, boxes: jax.Array, output_size: tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> jax.Array:
    """Region features (batch, regions, out_h, out_w, channels) in float32.

    grid: (batch, height, width, channels) features of each image.
    boxes: (batch, regions, 4) as (x1, y1, x2, y2) in image pixels; `spatial_scale` (grid cells per
        pixel, e.g. 1 / 32) maps them onto the grid. Padding boxes give values to be ignored.
    aligned: shift by half a cell so that a box edge on a pixel boundary samples where it lies (the
        right choice for new models; False reproduces the original Mask R-CNN).
    """
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be at least 1 (fixed shapes), not {sampling_ratio}")
    out_h, out_w = output_size
    boxes = boxes.astype(jnp.float32) * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    width, height = x2 - x1, y2 - y1
    if not aligned:  # the original RoIAlign makes every region at least one cell
        width, height = jnp.maximum(width, 1.0), jnp.maximum(height, 1.0)
    rows = _bin_weights(y1, height, out_h, sampling_ratio, grid.shape[1])  # (b, r, out_h, H)
    cols = _bin_weights(x1, width, out_w, sampling_ratio, grid.shape[2])  # (b, r, out_w, W)
    return jnp.einsum("brih,bhwc,brjw->brijc", rows, grid.astype(jnp.float32), cols, precision="highest")
