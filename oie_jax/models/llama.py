"""LLaMA decoder in Flax NNX.

Every parameter carries `logical_axes` metadata (see `oie_jax.sharding`); the layers are stored
stacked on a leading `layers` axis and run with `jax.lax.scan`, so compile time does not grow with
depth. Weight layouts are chosen so that Hugging Face conversion is transposes and reshapes only:

    embed (vocab, embed)         q (embed, q_heads, head_dim)   o (q_heads, head_dim, embed)
    lm_head (embed, vocab)       k, v (embed, kv_heads, head_dim)
    gate, up (embed, mlp)        down (mlp, embed)              norms (norm,)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from oie_jax.models import attention, lora, rope
from oie_jax.models.config import LlamaConfig
from oie_jax.models.layers import param, project, scan_layers, stacked
from oie_jax.sharding import constrain

RESIDUAL = ("batch", "length", "activation_embed")  # logical layout of the activations between blocks

class KVCache(NamedTuple):
    """Preallocated keys and values, one buffer per layer (updated in place, never re-stacked), and
    the segment id of every slot (0 = empty)."""

    k: tuple[jax.Array, ...]  # per layer (batch, kv_heads, slots, head_dim): attention reads it unpermuted
    v: tuple[jax.Array, ...]
    segment_ids: jax.Array  # (batch, slots)
    index: jax.Array  # scalar int32: the slot the next token is written to


def init_cache(cfg: LlamaConfig, batch: int, slots: int) -> KVCache:
    shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
    return KVCache(
        k=tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers)),
        segment_ids=jnp.zeros((batch, slots), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def unstack_layers(model: "Llama") -> list[nnx.State]:
    """Each layer's parameters as arrays of their own (a copy), for decoding on CPU: there a layer
    sliced out of the stacked parameters inside a compiled program is a copy of its weights at every
    token, which costs as much as the token itself."""
    _, state = nnx.split(model.layers)
    return [jax.tree.map(lambda a, i=i: a[i], state) for i in range(model.cfg.num_layers)]


def _param(rngs: nnx.Rngs, cfg: LlamaConfig, shape, logical_axes, scale: float | None = 0.02) -> nnx.Param:
    return param(rngs, shape, logical_axes, cfg.param_dtype, scale)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.rms_norm_eps
        self.scale = _param(rngs, cfg, (cfg.hidden_size,), ("norm",), scale=None)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Normalise in float32, cast back, then scale: the order Hugging Face uses.
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q = _param(rngs, cfg, (e, h, d), ("embed", "q_heads", "head_dim"))
        self.k = _param(rngs, cfg, (e, kv, d), ("embed", "kv_heads", "head_dim"))
        self.v = _param(rngs, cfg, (e, kv, d), ("embed", "kv_heads", "head_dim"))
        self.o = _param(rngs, cfg, (h, d, e), ("q_heads", "head_dim", "embed"))
        lora.add_adapters(self, cfg.lora, rngs, cfg.param_dtype)

    def __call__(self, x, cos, sin, mask: attention.AttentionMask, implementation: str, cache=None,
                 dropout_key=None):
        """x (batch, length, embed). `cache` = (this layer's k and v buffers, the slot to write at): the
        new keys and values are written into them in place. `dropout_key`: the adapters' dropout."""
        dtype = self.cfg.dtype
        q, k, v = (lora.adapted(self, name, x, project(x, getattr(self, name)[...].astype(dtype)), self.cfg.lora,
                                dropout_key) for name in ("q", "k", "v"))
        q, k = rope.apply_rotation(q, cos, sin), rope.apply_rotation(k, cos, sin)
        if cache is not None:
            k_cache, v_cache, index = cache
            write = lambda buffer, new: jax.lax.dynamic_update_slice(  # noqa: E731
                buffer, new.swapaxes(1, 2).astype(buffer.dtype), (0, 0, index, 0))
            cache = (write(k_cache, k), write(v_cache, v))
            k, v = (buffer.swapaxes(1, 2) for buffer in cache)  # a view: the einsum takes either layout
        out = attention.attend(q, k, v, mask, implementation, cached=cache is not None)
        b, t, h, d = out.shape
        o = self.o[...].astype(dtype)
        y = (out.reshape(b * t, h * d) @ o.reshape(h * d, -1)).reshape(b, t, -1)
        return lora.adapted(self, "o", out, y, self.cfg.lora, dropout_key), cache


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate = _param(rngs, cfg, (e, m), ("embed", "mlp"))
        self.up = _param(rngs, cfg, (e, m), ("embed", "mlp"))
        self.down = _param(rngs, cfg, (m, e), ("mlp", "embed"))
        lora.add_adapters(self, cfg.lora, rngs, cfg.param_dtype)

    def __call__(self, x, dropout_key=None):
        def projected(name, x):
            y = project(x, getattr(self, name)[...].astype(self.cfg.dtype))
            return lora.adapted(self, name, x, y, self.cfg.lora, dropout_key)

        return projected("down", jax.nn.silu(projected("gate", x)) * projected("up", x))


class Block(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, mask, implementation, cache=None, dropout_key=None):
        """`dropout_key` (training with adapter dropout): one key for the attention, one for the MLP."""
        keys = (None, None) if dropout_key is None else jax.random.split(dropout_key)
        attended, cache = self.attn(self.attn_norm(x), cos, sin, mask, implementation, cache, keys[0])
        x = x + attended
        return x + self.mlp(self.mlp_norm(x), keys[1]), cache


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, cfg, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        self.layers = stacked(lambda rngs: Block(cfg, rngs=rngs), cfg.num_layers, rngs)
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, cfg, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))

    def __call__(self, tokens, positions=None, segment_ids=None, cache: KVCache | None = None, layers=None,
                 inputs_embeds=None):
        """Float32 logits (batch, length, vocab) and the updated cache (None without one); see
        `hidden_states` for the arguments."""
        x, cache = self.hidden_states(tokens, positions, segment_ids, cache, layers, inputs_embeds=inputs_embeds)
        return self.logits(x), cache

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        return constrain(self.embed[...][tokens].astype(self.cfg.dtype), RESIDUAL)

    def hidden_states(self, tokens, positions=None, segment_ids=None, cache: KVCache | None = None, layers=None,
                      dropout_key=None, inputs_embeds=None):
        """The final-normed hidden states (batch, length, embed) and the updated cache.

        positions: per-token RoPE positions (restart per packed segment); default 0..length-1, after
            the filled slots when a cache is given.
        segment_ids: 1, 2, ... per packed segment, 0 for padding; default all 1.
        layers: `unstack_layers(self)`, used with a cache instead of slicing the stacked parameters.
        dropout_key: a random key for the adapters' dropout (training a LoRA model); None = no dropout.
        inputs_embeds: (batch, length, embed) to use instead of the tokens' embeddings (image features
            spliced in, models/multimodal.py); the tokens still give the shape.
        """
        batch, length = tokens.shape
        slots = jnp.arange(length, dtype=jnp.int32)
        if positions is None:
            start = 0 if cache is None else cache.index
            positions = jnp.broadcast_to(start + slots, tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)
        if cache is None:
            mask = attention.AttentionMask(segment_ids, segment_ids, slots, slots)
        else:
            kv_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, cache.index))
            kv_slots = jnp.arange(cache.segment_ids.shape[1], dtype=jnp.int32)
            mask = attention.AttentionMask(segment_ids, kv_segments, cache.index + slots, kv_slots)

        inv_freq = rope.inverse_frequencies(self.cfg.head_dim, self.cfg.rope_theta, self.cfg.rope_scaling)
        cos, sin = rope.rotation_tables(positions, inv_freq)
        x = self.embed_tokens(tokens) if inputs_embeds is None else constrain(inputs_embeds.astype(self.cfg.dtype),
                                                                              RESIDUAL)
        x, cache = self._run_layers(x, cos, sin, mask, cache, layers, dropout_key)
        return self.final_norm(x), cache

    def logits(self, x: jax.Array) -> jax.Array:
        """Float32 logits of hidden states (batch, length, embed), whatever the compute dtype."""
        head = self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
        logits = project(x, head.astype(self.cfg.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    def _run_layers(self, x, cos, sin, mask, cache: KVCache | None, layers: list[nnx.State] | None, dropout_key):
        graphdef, state = nnx.split(self.layers)
        implementation = attention.resolve(self.cfg.attention, jax.devices()[0].platform, self.cfg.dtype)
        if cache is not None:
            # Decoding: the layers one after another, each writing its own cache buffers in place (a scan
            # would re-stack every layer's cache, i.e. copy it, at every token).
            ks, vs = list(cache.k), list(cache.v)
            for i in range(self.cfg.num_layers):
                layer_state = layers[i] if layers is not None else jax.tree.map(lambda a, i=i: a[i], state)
                block = nnx.merge(graphdef, layer_state)
                x, (ks[i], vs[i]) = block(x, cos, sin, mask, implementation, (ks[i], vs[i], cache.index))
                x = constrain(x, RESIDUAL)
            return x, KVCache(tuple(ks), tuple(vs), mask.kv_segments, cache.index + x.shape[1])

        def apply(block, x, key=None):  # block boundary: every block starts from the same layout
            return constrain(block(x, cos, sin, mask, implementation, dropout_key=key)[0], RESIDUAL)

        keys = None if dropout_key is None else jax.random.split(dropout_key, self.cfg.num_layers)
        return scan_layers(self.layers, x, apply, self.cfg.remat, keys), None
