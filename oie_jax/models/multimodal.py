"""OIELLM that sees the picture, in LLaVA's layout: a vision encoder's patch features, projected by a
two-layer MLP to the LLaMA's width, take the places of the image placeholder tokens in the prompt, so
the image can change the text answer (a relation, an entity's type), not only where a box goes.

    prompt    ... <image> <image> ... <image> text /Relation Extraction     (one placeholder per image token)
    image  -> encoder -> hidden state of `feature_layer` (class token dropped) -> pool -> projector
           -> (image tokens, embed), written over the placeholders' embeddings in order

The LLaMA knows nothing of images: it takes the spliced embeddings as `inputs_embeds`. Decoding with a
KV cache passes the image at the prefill only; the image tokens are then ordinary cached positions.
"""

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oie_jax.errors import UserError
from oie_jax.models import encoders
from oie_jax.models.config import LlamaConfig
from oie_jax.models.layers import param, project
from oie_jax.models.llama import KVCache, Llama
from oie_jax.models.policies import check_policies
from oie_jax.models.vision import ViT, ViTConfig


@dataclasses.dataclass(frozen=True)
class MultimodalConfig:
    image_token_id: int  # the prompt's placeholder token, one per image token
    # The encoder hidden state the projector reads, counted as Hugging Face's `hidden_states` (0 = the
    # embeddings, -1 = the last block's output; LLaVA reads the one before last). ViT encoders only:
    # MobileNetV2 gives its final grid.
    feature_layer: int = -2
    pool: int = 1  # average the grid over pool x pool cells: pool^2 times fewer image tokens
    param_dtype: str = "float32"
    dtype: str = "float32"

    def __post_init__(self):
        if not isinstance(self.pool, int) or self.pool < 1:
            raise UserError(f"multimodal pool {self.pool!r} must be a positive integer")
        check_policies(self)

    def image_tokens(self, vision_cfg, size: tuple[int, int]) -> int:
        """How many placeholders one image of `size` (height, width) pixels fills: a ViT's whole patches,
        MobileNetV2's cells of 32 pixels (its padded convolutions count a partial one), pooled."""
        if isinstance(vision_cfg, ViTConfig):
            grid = [n // vision_cfg.patch_size for n in size]
        else:
            grid = [-(-n // 32) for n in size]
        return (grid[0] // self.pool) * (grid[1] // self.pool)

    def replace(self, **changes) -> "MultimodalConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


class Projector(nnx.Module):
    """LLaVA's projector: linear, GELU (erf), linear, with biases; split like an MLP under tensor
    parallelism (the first by columns, the second by rows)."""

    def __init__(self, vision_width: int, text_width: int, cfg: MultimodalConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.hidden = param(rngs, (vision_width, text_width), ("vision_embed", "mlp"), cfg.param_dtype)
        self.hidden_bias = param(rngs, (text_width,), ("mlp",), cfg.param_dtype, scale=0)
        self.out = param(rngs, (text_width, text_width), ("mlp", "embed"), cfg.param_dtype)
        self.out_bias = param(rngs, (text_width,), ("norm",), cfg.param_dtype, scale=0)

    def __call__(self, features: jax.Array) -> jax.Array:
        dtype = self.cfg.dtype
        hidden = jax.nn.gelu(project(features.astype(dtype), self.hidden[...].astype(dtype))
                             + self.hidden_bias[...].astype(dtype), approximate=False)
        return project(hidden, self.out[...].astype(dtype)) + self.out_bias[...].astype(dtype)


def splice_images(embeds: jax.Array, is_image: jax.Array, image_embeds: jax.Array) -> jax.Array:
    """`embeds` (batch, length, embed) with the positions where `is_image` holds replaced, in order, by
    `image_embeds` (batch, n, embed): a row's k-th placeholder takes its row's k-th image token. That the
    counts agree is the prompt builder's to check (`check_placeholders`)."""
    index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, image_embeds.shape[1] - 1)
    taken = jnp.take_along_axis(image_embeds.astype(embeds.dtype), index[..., None], axis=1)
    return jnp.where(is_image[..., None], taken, embeds)


def check_placeholders(rows, image_token_id: int, image_tokens: int, where: str = "prompt") -> None:
    """Every row of token ids (host ints: sequences, or an array batch x length) holds exactly
    `image_tokens` placeholders."""
    counts = [int(np.sum(np.asarray(row) == image_token_id)) for row in rows]
    wrong = [(row, n) for row, n in enumerate(counts) if n != image_tokens]
    if wrong:
        row, n = wrong[0]
        raise UserError(f"{where} row {row} holds {n} image placeholders, the image fills {image_tokens}")


class MultimodalLlama(nnx.Module):
    def __init__(self, llama_cfg: LlamaConfig, vision_cfg, cfg: MultimodalConfig, *, rngs: nnx.Rngs):
        if not 0 <= cfg.image_token_id < llama_cfg.vocab_size:
            raise UserError(f"image_token_id {cfg.image_token_id} is outside the vocabulary of {llama_cfg.vocab_size}")
        self.cfg = cfg
        self.llama = Llama(llama_cfg, rngs=rngs)
        self.vision = encoders.build(vision_cfg, rngs)
        self.projector = Projector(encoders.vision_width(vision_cfg), llama_cfg.hidden_size, cfg, rngs=rngs)

    def image_embeds(self, images: jax.Array) -> jax.Array:
        """images (batch, height, width, channels) or (batch, images, height, width, channels), normalised
        -> (batch, image tokens of all the row's images, embed), in the order the placeholders take them."""
        batch = images.shape[0]
        images = images.reshape(-1, *images.shape[-3:])
        if isinstance(self.vision, ViT):
            tokens = self.vision.hidden_state(images, self.cfg.feature_layer)
            tokens = tokens[:, 1:] if self.vision.cfg.class_token else tokens  # LLaVA's "default" selection
            p = self.vision.cfg.patch_size
            grid = tokens.reshape(images.shape[0], images.shape[1] // p, images.shape[2] // p, -1)
        else:
            grid = self.vision(images).grid
        grid = pool_grid(grid, self.cfg.pool)
        return self.projector(grid.reshape(batch, -1, grid.shape[-1]))

    def image_tokens(self, image_shape) -> int:
        """Placeholders a row of images of this shape ((images,) height, width, channels) fills."""
        per_image = self.cfg.image_tokens(self.vision.cfg, tuple(image_shape[-3:-1]))
        return per_image * (image_shape[0] if len(image_shape) == 4 else 1)

    def prompt_embeds(self, tokens: jax.Array, images: jax.Array) -> jax.Array:
        """The embeddings of `tokens` with the images' tokens over its placeholders."""
        embeds = self.llama.embed_tokens(tokens)
        return splice_images(embeds, tokens == self.cfg.image_token_id, self.image_embeds(images))

    def hidden_states(self, tokens, images=None, positions=None, segment_ids=None, cache: KVCache | None = None,
                      layers=None, dropout_key=None):
        """As `Llama.hidden_states`; `images` (see `image_embeds`) fill the placeholders of `tokens`. None
        when no placeholder is in `tokens` (a text-only row, or decoding after the prefill)."""
        inputs_embeds = None if images is None else self.prompt_embeds(tokens, images)
        return self.llama.hidden_states(tokens, positions, segment_ids, cache, layers, dropout_key, inputs_embeds)

    def __call__(self, tokens, images=None, positions=None, segment_ids=None, cache: KVCache | None = None,
                 layers=None):
        x, cache = self.hidden_states(tokens, images, positions, segment_ids, cache, layers)
        return self.llama.logits(x), cache


def pool_grid(grid: jax.Array, pool: int) -> jax.Array:
    """grid (batch, h, w, c) averaged over pool x pool cells (cells past the last whole window dropped)."""
    if pool == 1:
        return grid
    b, h, w, c = grid.shape
    h, w = h // pool, w // pool
    cells = grid[:, :h * pool, :w * pool].reshape(b, h, pool, w, pool, c)
    return cells.astype(jnp.float32).mean(axis=(2, 4)).astype(grid.dtype)
