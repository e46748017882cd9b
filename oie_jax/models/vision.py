"""Vision Transformer image encoder in Flax NNX, in the two layouts users bring weights in:

    clip    class token, LayerNorm before the encoder, quick-GELU; pooled = LayerNorm(class token);
            grid = the encoder's patch tokens (Hugging Face's `last_hidden_state[:, 1:]`)
    siglip  no class token, GELU (tanh), LayerNorm after the encoder; pooled = attention pooling by a
            learned probe; grid = the normed patch tokens

Images are NHWC floats, already normalised. Layers are stacked on a `layers` axis and scanned, as in
the LLaMA. Weight layouts (conversion is transposes and reshapes only):

    patch (patch, patch, channels, embed)    q, k, v (embed, heads, head_dim)   o (heads, head_dim, embed)
    positions (grid * grid, embed)           up (embed, mlp)                    down (mlp, embed)

An image whose patch grid differs from the pretraining grid gets the position embeddings resized
with PyTorch's bicubic rule (a = -0.75, half-pixel centres), as Hugging Face does.
"""

import dataclasses
import functools
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oie_jax.errors import UserError
from oie_jax.models.layers import param, project, scan_layers, stacked
from oie_jax.models.policies import check_policies
from oie_jax.sharding import constrain

LAYOUTS = ("clip", "siglip")
TOKENS = ("batch", "length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    layout: str  # one of LAYOUTS
    image_size: int  # pretraining resolution (square)
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    num_channels: int = 3
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of matmuls; norms and softmax stay float32
    remat: str = "none"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise UserError(f"vision layout {self.layout!r} is not one of {LAYOUTS}")
        if self.hidden_size % self.num_heads:
            raise UserError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        if self.image_size % self.patch_size:
            raise UserError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        check_policies(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid(self) -> int:  # patches per side at the pretraining resolution
        return self.image_size // self.patch_size

    @property
    def class_token(self) -> bool:
        return self.layout == "clip"

    def activation(self, x: jax.Array) -> jax.Array:
        if self.layout == "clip":
            return x * jax.nn.sigmoid(1.702 * x)  # quick GELU
        return jax.nn.gelu(x, approximate=True)

    def replace(self, **changes) -> "ViTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # Hugging Face `config.json` of a vision tower (or of a whole CLIP/SigLIP model: its vision_config).
    HF_MODEL_TYPES = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip"}
    HF_ACTIVATIONS = {"clip": "quick_gelu", "siglip": "gelu_pytorch_tanh"}

    @classmethod
    def from_hf_config(cls, hf: dict, **overrides) -> "ViTConfig":
        model_type = hf.get("model_type")
        if model_type not in cls.HF_MODEL_TYPES:
            raise UserError(f"model_type {model_type!r} is not a CLIP or SigLIP vision model "
                            f"(one of {sorted(cls.HF_MODEL_TYPES)})")
        layout = cls.HF_MODEL_TYPES[model_type]
        vision = hf.get("vision_config", {}) if model_type in ("clip", "siglip") else hf
        act = vision.get("hidden_act", cls.HF_ACTIVATIONS[layout])
        if act != cls.HF_ACTIVATIONS[layout]:
            raise UserError(f"hidden_act {act!r} is not supported for {layout} (only {cls.HF_ACTIVATIONS[layout]!r})")
        if layout == "siglip" and not vision.get("vision_use_head", True):
            raise UserError("SigLIP towers without their attention-pooling head (vision_use_head=false) are not "
                            "supported")
        defaults = {"clip": (224, 32, 1e-5), "siglip": (224, 16, 1e-6)}[layout]  # transformers' defaults
        try:
            return cls(
                layout=layout,
                image_size=int(vision.get("image_size", defaults[0])),
                patch_size=int(vision.get("patch_size", defaults[1])),
                hidden_size=int(vision.get("hidden_size", 768)),
                intermediate_size=int(vision.get("intermediate_size", 3072)),
                num_layers=int(vision.get("num_hidden_layers", 12)),
                num_heads=int(vision.get("num_attention_heads", 12)),
                layer_norm_eps=float(vision.get("layer_norm_eps", defaults[2])),
                num_channels=int(vision.get("num_channels", 3)),
                **overrides,
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid vision config ({exc})") from None

    def to_hf_config(self) -> dict:
        prefix = {"clip": "CLIP", "siglip": "Siglip"}[self.layout]
        return {
            "architectures": [f"{prefix}VisionModel"],
            "model_type": f"{self.layout}_vision_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_channels": self.num_channels,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": self.HF_ACTIVATIONS[self.layout],
            "layer_norm_eps": self.layer_norm_eps,
            "torch_dtype": self.param_dtype,
        }


class VisionOutput(NamedTuple):
    grid: jax.Array  # (batch, grid_h, grid_w, width): features per image cell
    pooled: jax.Array  # (batch, width)


class LayerNorm(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.layer_norm_eps
        self.scale = param(rngs, (cfg.hidden_size,), ("norm",), cfg.param_dtype, scale=None)
        self.bias = param(rngs, (cfg.hidden_size,), ("norm",), cfg.param_dtype, scale=0)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
        return (normed * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head attention with biases; every query sees every key (no mask)."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        for name in ("q", "k", "v"):
            setattr(self, name, param(rngs, (e, h, d), ("embed", "q_heads", "head_dim"), cfg.param_dtype))
            setattr(self, f"{name}_bias", param(rngs, (h, d), ("q_heads", "head_dim"), cfg.param_dtype, scale=0))
        self.o = param(rngs, (h, d, e), ("q_heads", "head_dim", "embed"), cfg.param_dtype)
        self.o_bias = param(rngs, (e,), ("norm",), cfg.param_dtype, scale=0)

    def __call__(self, queries: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """queries (batch, t, embed) attend to keys (batch, s, embed), default the queries themselves."""
        dtype = self.cfg.dtype
        keys = queries if keys is None else keys
        inputs = ((queries, self.q, self.q_bias), (keys, self.k, self.k_bias), (keys, self.v, self.v_bias))
        q, k, v = (project(x, w[...].astype(dtype)) + b[...].astype(dtype) for x, w, b in inputs)
        out = attend(q, k, v)
        b, t, h, d = out.shape
        out = project(out.reshape(b, t, h * d), self.o[...].astype(dtype).reshape(h * d, -1))
        return out + self.o_bias[...].astype(dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention (in float32) of q (batch, t, heads, d) over k, v (batch, s, heads, d). The
    matmuls are batched over leading (batch, heads) axes and the softmax's division comes after the
    second one (t x d quotients instead of t x s): XLA's CPU fuses that form ~2.5x faster than
    `jax.nn.dot_product_attention`."""
    q, k, v = (x.swapaxes(1, 2) for x in (q, k, v))
    scores = jnp.matmul(q * q.shape[-1] ** -0.5, k.swapaxes(2, 3), preferred_element_type=jnp.float32)
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    out = jnp.matmul(weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / weights.sum(axis=-1, keepdims=True)).astype(v.dtype).swapaxes(1, 2)


class MLP(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.up = param(rngs, (e, m), ("embed", "mlp"), cfg.param_dtype)
        self.up_bias = param(rngs, (m,), ("mlp",), cfg.param_dtype, scale=0)
        self.down = param(rngs, (m, e), ("mlp", "embed"), cfg.param_dtype)
        self.down_bias = param(rngs, (e,), ("norm",), cfg.param_dtype, scale=0)

    def __call__(self, x):
        dtype = self.cfg.dtype
        hidden = self.cfg.activation(project(x, self.up[...].astype(dtype)) + self.up_bias[...].astype(dtype))
        return project(hidden, self.down[...].astype(dtype)) + self.down_bias[...].astype(dtype)


class Block(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.attn_norm = LayerNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = LayerNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class PoolingHead(nnx.Module):
    """SigLIP's pooling: a learned probe attends to the tokens, then a residual MLP."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.probe = param(rngs, (cfg.hidden_size,), ("norm",), cfg.param_dtype)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm = LayerNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, tokens):
        probe = jnp.broadcast_to(self.probe[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
        pooled = self.attn(probe, tokens)
        return (pooled + self.mlp(self.norm(pooled)))[:, 0]


@functools.cache
def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of PyTorch's bicubic resize (align_corners=False, a = -0.75, edge
    samples repeated): out = matrix @ in along one axis."""
    a = -0.75

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    matrix = np.zeros((size_out, size_in), np.float64)
    for i in range(size_out):
        source = (i + 0.5) * size_in / size_out - 0.5
        left = int(np.floor(source))
        t = source - left
        for offset, weight in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[i, min(max(left + offset, 0), size_in - 1)] += weight
    return matrix.astype(np.float32)


def resize_positions(positions: jax.Array, grid: int, grid_h: int, grid_w: int) -> jax.Array:
    """Position embeddings (grid * grid, embed) of the pretraining grid, for a grid_h x grid_w grid."""
    if (grid_h, grid_w) == (grid, grid):
        return positions
    table = positions.reshape(grid, grid, -1).astype(jnp.float32)
    table = jnp.einsum("hi,ijc->hjc", bicubic_matrix(grid, grid_h), table, precision="highest")
    table = jnp.einsum("wj,hjc->hwc", bicubic_matrix(grid, grid_w), table, precision="highest")
    return table.reshape(grid_h * grid_w, -1).astype(positions.dtype)


class ViT(nnx.Module):
    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        p, c, e = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        self.patch = param(rngs, (p, p, c, e), ("kernel", "kernel", "channels", "embed"), cfg.param_dtype)
        self.positions = param(rngs, (cfg.grid ** 2 + cfg.class_token, e), ("positions", "embed"), cfg.param_dtype)
        if cfg.class_token:
            self.class_token = param(rngs, (e,), ("norm",), cfg.param_dtype)
            self.pre_norm = LayerNorm(cfg, rngs=rngs)
        else:
            self.patch_bias = param(rngs, (e,), ("norm",), cfg.param_dtype, scale=0)
        self.layers = stacked(lambda rngs: Block(cfg, rngs=rngs), cfg.num_layers, rngs)
        self.post_norm = LayerNorm(cfg, rngs=rngs)
        if cfg.layout == "siglip":
            self.head = PoolingHead(cfg, rngs=rngs)

    def __call__(self, images: jax.Array) -> VisionOutput:
        """images (batch, height, width, channels), normalised; any size of at least one patch (pixels
        beyond the last whole patch are ignored, as a strided convolution does)."""
        x, (gh, gw) = self._embed(images)
        x = scan_layers(self.layers, x, self._block, self.cfg.remat)
        if self.cfg.class_token:
            grid, pooled = x[:, 1:], self.post_norm(x[:, 0])
        else:
            grid = self.post_norm(x)
            pooled = self.head(grid)
        return VisionOutput(grid.reshape(images.shape[0], gh, gw, -1), pooled)

    def hidden_state(self, images: jax.Array, layer: int) -> jax.Array:
        """The tokens (batch, class token + patches, embed) after `layer` blocks, no final norm: Hugging
        Face's `hidden_states[layer]` (0 = the embeddings, -1 = the last block's output), which LLaVA's
        projector reads."""
        count = layer if layer >= 0 else self.cfg.num_layers + 1 + layer
        if not 0 <= count <= self.cfg.num_layers:
            raise UserError(f"vision feature layer {layer} is outside a {self.cfg.num_layers}-layer encoder")
        x, _ = self._embed(images)
        if count == 0:
            return x
        graphdef, state = nnx.split(self.layers)
        first = nnx.merge(graphdef, jax.tree.map(lambda a: a[:count], state))
        return scan_layers(first, x, self._block, self.cfg.remat)

    @staticmethod
    def _block(block, x):
        return constrain(block(x), TOKENS)

    def _embed(self, images: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
        """The tokens entering the first block, and the patch grid (height, width)."""
        cfg, dtype = self.cfg, self.cfg.dtype
        b, height, width, c = images.shape
        p = cfg.patch_size
        gh, gw = height // p, width // p
        if gh == 0 or gw == 0 or c != cfg.num_channels:
            raise UserError(f"images of shape {images.shape[1:]} do not fit {p}-pixel patches of {cfg.num_channels} "
                            "channels")
        patches = images[:, :gh * p, :gw * p].astype(dtype).reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = project(patches.reshape(b, gh * gw, p * p * c), self.patch[...].astype(dtype).reshape(p * p * c, -1))
        positions = self.positions[...].astype(dtype)
        if cfg.class_token:
            x = jnp.concatenate([jnp.broadcast_to(self.class_token[...].astype(dtype), (b, 1, x.shape[-1])), x], axis=1)
            patch_positions = resize_positions(positions[1:], cfg.grid, gh, gw)
            x = self.pre_norm(x + jnp.concatenate([positions[:1], patch_positions])[None])
        else:
            x = x + self.patch_bias[...].astype(dtype) + resize_positions(positions, cfg.grid, gh, gw)[None]
        return constrain(x, TOKENS), (gh, gw)
