"""MobileNetV2 (Sandler et al. 2018, torchvision's layout) in Flax NNX: the small pretrained image
encoder that ships offline (torchvision's ImageNet weights, `oie_jax.assets.mobilenet_v2_weights`).

Batch norms are folded into the convolutions when weights are converted (inference statistics), so
every layer is a convolution with a bias. Images are NHWC floats, normalised with ImageNet's mean
and std; at 224 px the grid is 7 x 7 x 1280.
"""

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from oie_jax.errors import UserError
from oie_jax.models.layers import param
from oie_jax.models.policies import check_policies
from oie_jax.models.vision import VisionOutput

# (expansion, output channels, repeats, stride of the first repeat): the paper's table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclasses.dataclass(frozen=True)
class MobileNetV2Config:
    num_classes: int = 1000  # ImageNet classifier on the pooled features; 0: none
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"  # kept for a common interface with the ViT; the network is too small to need it

    def __post_init__(self):
        check_policies(self)

    @property
    def blocks(self) -> list[tuple[int, int, int, int]]:
        """(input channels, expansion, output channels, stride) of every inverted residual block."""
        out, channels = [], STEM_CHANNELS
        for expansion, width, repeats, stride in STAGES:
            for repeat in range(repeats):
                out.append((channels, expansion, width, stride if repeat == 0 else 1))
                channels = width
        return out

    def replace(self, **changes) -> "MobileNetV2Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


class Conv(nnx.Module):
    """A convolution with a bias (a folded batch norm), padded as PyTorch pads: (size - 1) // 2 a side."""

    def __init__(self, cfg: MobileNetV2Config, size: int, channels_in: int, channels_out: int, stride: int = 1,
                 groups: int = 1, *, rngs: nnx.Rngs):
        self.cfg, self.stride, self.groups, self.pad = cfg, stride, groups, (size - 1) // 2
        self.kernel = param(rngs, (size, size, channels_in // groups, channels_out),
                            ("kernel", "kernel", "channels", "channels"), cfg.param_dtype)
        self.bias = param(rngs, (channels_out,), ("channels",), cfg.param_dtype, scale=0)

    def __call__(self, x, relu6: bool = True):
        kernel = self.kernel[...].astype(self.cfg.dtype)
        size, _, _, channels_out = kernel.shape
        # XLA's CPU convolutions are slow for these two shapes (about 10x for depthwise, 4x for 1 x 1
        # against what follows), which are the whole network but its stem.
        if size == 1 and self.stride == 1 and self.groups == 1:
            y = (x.reshape(-1, x.shape[-1]) @ kernel.reshape(-1, channels_out)).reshape(*x.shape[:3], channels_out)
        elif self.groups == x.shape[-1] == channels_out:
            y = depthwise(x, kernel[:, :, 0], self.stride, self.pad)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), ((self.pad, self.pad),) * 2,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             feature_group_count=self.groups)
        y = y + self.bias[...].astype(y.dtype)
        return jnp.clip(y, 0, 6) if relu6 else y


def depthwise(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """A depthwise convolution (kernel (size, size, channels)) as a sum of shifted, strided slices times
    one kernel tap each: elementwise work that XLA fuses into one loop."""
    batch, height, width, channels = x.shape
    size = kernel.shape[0]
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = (height + 2 * pad - size) // stride + 1, (width + 2 * pad - size) // stride + 1
    out = jnp.zeros((batch, out_h, out_w, channels), x.dtype)
    for dy in range(size):
        for dx in range(size):
            end = (batch, dy + (out_h - 1) * stride + 1, dx + (out_w - 1) * stride + 1, channels)
            out = out + jax.lax.slice(padded, (0, dy, dx, 0), end, (1, stride, stride, 1)) * kernel[dy, dx]
    return out


class InvertedResidual(nnx.Module):
    def __init__(self, cfg, channels_in: int, expansion: int, channels_out: int, stride: int, *, rngs: nnx.Rngs):
        hidden = channels_in * expansion
        self.residual = stride == 1 and channels_in == channels_out
        if expansion != 1:
            self.expand = Conv(cfg, 1, channels_in, hidden, rngs=rngs)
        self.depthwise = Conv(cfg, 3, hidden, hidden, stride, groups=hidden, rngs=rngs)
        self.project = Conv(cfg, 1, hidden, channels_out, rngs=rngs)

    def __call__(self, x):
        y = self.expand(x) if hasattr(self, "expand") else x
        y = self.project(self.depthwise(y), relu6=False)  # linear bottleneck
        return x + y if self.residual else y


class MobileNetV2(nnx.Module):
    def __init__(self, cfg: MobileNetV2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.stem = Conv(cfg, 3, 3, STEM_CHANNELS, stride=2, rngs=rngs)
        for i, block in enumerate(cfg.blocks, start=1):
            setattr(self, f"block{i}", InvertedResidual(cfg, *block, rngs=rngs))
        self.head = Conv(cfg, 1, cfg.blocks[-1][2], HEAD_CHANNELS, rngs=rngs)
        if cfg.num_classes:
            self.classifier = param(rngs, (HEAD_CHANNELS, cfg.num_classes), ("channels", "classes"), cfg.param_dtype)
            self.classifier_bias = param(rngs, (cfg.num_classes,), ("classes",), cfg.param_dtype, scale=0)

    def __call__(self, images: jax.Array) -> VisionOutput:
        """images (batch, height, width, 3), normalised -> grid (batch, h / 32, w / 32, 1280) and its mean."""
        x = self.stem(images.astype(self.cfg.dtype))
        for i in range(1, len(self.cfg.blocks) + 1):
            x = getattr(self, f"block{i}")(x)
        grid = self.head(x)
        return VisionOutput(grid, jnp.mean(grid.astype(jnp.float32), axis=(1, 2)).astype(grid.dtype))

    def logits(self, pooled: jax.Array) -> jax.Array:
        """Float32 ImageNet logits of pooled features."""
        if not self.cfg.num_classes:
            raise UserError("this MobileNetV2 has no classifier (num_classes=0)")
        logits = jnp.matmul(pooled, self.classifier[...].astype(pooled.dtype), preferred_element_type=jnp.float32)
        return logits + self.classifier_bias[...].astype(jnp.float32)
