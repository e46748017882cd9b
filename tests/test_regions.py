"""RoIAlign against torchvision's `roi_align` on random grids and boxes, inside, across and outside
the grid, aligned or not."""

import jax
import numpy as np
import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

from oie_jax.models.regions import roi_align


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_roi_align_equals_torchvision(aligned, sampling_ratio):
    rng = np.random.default_rng(sampling_ratio + 10 * aligned)
    batch, regions, height, width, channels, stride = 2, 7, 7, 9, 5, 32
    grid = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
    corners = rng.uniform(-60, [width * stride + 60, height * stride + 60], size=(batch, regions, 2, 2))
    boxes = np.concatenate([corners.min(axis=2), corners.max(axis=2)], axis=-1).astype(np.float32)
    boxes[0, 0] = [10, 10, 12, 11]  # smaller than one cell
    boxes[1, 0] = [-200, -200, -100, -90]  # wholly outside
    boxes[1, 1] = [0, 0, width * stride, height * stride]  # the whole image
    ours = jax.jit(roi_align, static_argnums=(2, 3, 4, 5))(grid, boxes, (3, 4), 1 / stride, sampling_ratio, aligned)
    image_of_box = np.repeat(np.arange(batch, dtype=np.float32), regions)[:, None]
    indexed = np.concatenate([image_of_box, boxes.reshape(-1, 4)], axis=1)
    expected = torchvision_roi_align(torch.from_numpy(grid).permute(0, 3, 1, 2), torch.from_numpy(indexed), (3, 4),
                                     spatial_scale=1 / stride, sampling_ratio=sampling_ratio, aligned=aligned)
    expected = expected.permute(0, 2, 3, 1).numpy().reshape(batch, regions, 3, 4, channels)
    assert np.abs(expected).mean() > 0.05
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)
