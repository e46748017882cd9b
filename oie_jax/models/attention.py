"""Attention, its kernel chosen once by `LlamaConfig.attention` and dispatched here:

    xla     einsum with a materialised float32 score matrix: any platform, the reference
    cudnn   `jax.nn.dot_product_attention` with cuDNN's fused kernel (GPU; bfloat16 or float16)
    splash  Pallas splash attention (TPU), run per shard under `shard_map` on a mesh
    auto    splash on TPU, cudnn on GPU (bfloat16/float16 compute), xla elsewhere

Every kernel sees the same inputs: q (batch, t, heads, d), k and v (batch, s, kv_heads, d) with
heads a multiple of kv_heads (grouped-query attention), and an `AttentionMask` of segment ids and
slots. A query attends to keys of its own segment at or before its slot; packed rows carry segments
1, 2, ..., padding 0. Decoding with a KV cache (queries and keys of different lengths, empty slots)
always takes the reference path.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from oie_jax.errors import UserError
from oie_jax.models.config import ATTENTION as IMPLEMENTATIONS

FUSED_DTYPES = ("bfloat16", "float16")  # what cuDNN's flash attention takes
SPLASH_BLOCK = 512  # splash's query and key block; shorter sequences use one block (a multiple of 128)

# Finite, so that a row with no visible key (a padding query) gives a uniform softmax, not NaN.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)


class AttentionMask(NamedTuple):
    q_segments: jax.Array  # (b, t) int32
    kv_segments: jax.Array  # (b, s) int32
    q_slots: jax.Array  # (t,) int32: the slot of each query (its index in the cache, or in the row)
    kv_slots: jax.Array  # (s,) int32

    def dense(self) -> jax.Array:
        """(b, t, s) booleans: causal by slot, within one segment, never to an empty slot."""
        same_segment = self.q_segments[:, :, None] == self.kv_segments[:, None, :]
        causal = self.kv_slots[None, None, :] <= self.q_slots[None, :, None]
        return same_segment & causal & (self.kv_segments[:, None, :] != 0)


def resolve(name: str, platform: str, dtype: str) -> str:
    """The kernel `name` stands for on `platform` with `dtype` compute."""
    if name not in IMPLEMENTATIONS:
        raise UserError(f"attention {name!r} is not one of {IMPLEMENTATIONS}")
    if name == "auto":
        return {"tpu": "splash", "gpu": "cudnn" if dtype in FUSED_DTYPES else "xla"}.get(platform, "xla")
    if name == "cudnn" and dtype not in FUSED_DTYPES:
        raise UserError(f"cudnn attention computes in {' or '.join(FUSED_DTYPES)}, not {dtype} (model.dtype)")
    return name


def attend(q, k, v, mask: AttentionMask, implementation: str, cached: bool = False) -> jax.Array:
    """(b, t, heads, d) attention outputs in v's dtype. `cached`: keys come from a KV cache."""
    if cached or implementation == "xla":
        return reference(q, k, v, mask.dense())
    if implementation == "cudnn":
        return dot_product(q, k, v, mask, "cudnn")
    if implementation == "splash":
        return splash(q, k, v, mask)
    raise ValueError(f"unresolved attention implementation {implementation!r}")


def reference(q, k, v, mask):
    """q (b, t, heads, d); k, v (b, s, kv_heads, d); query head h reads kv head h // group."""
    b, t, heads, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, heads // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * d**-0.5
    scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, heads, d)


def same_segment(mask: AttentionMask) -> jax.Array:
    # Padding (segment 0) may see padding: its outputs feed nothing, and no query row is then empty,
    # which fused kernels would turn into NaN.
    return mask.q_segments[:, :, None] == mask.kv_segments[:, None, :]


def dot_product(q, k, v, mask: AttentionMask, implementation: str) -> jax.Array:
    """`jax.nn.dot_product_attention` (its `xla` path runs anywhere; `cudnn` is the fused GPU kernel)."""
    return jax.nn.dot_product_attention(q, k, v, mask=same_segment(mask)[:, None], is_causal=True,
                                        implementation=implementation)


def splash(q, k, v, mask: AttentionMask) -> jax.Array:
    """Pallas splash attention: causal within segments, per example (vmap), per shard of the current
    mesh (shard_map: rows over the batch axes, heads over `tensor`). Interpreted off TPU (tests)."""
    from oie_jax import sharding

    length = q.shape[1]
    if length % 128:
        raise UserError(f"splash attention needs a sequence length that is a multiple of 128, not {length}")
    interpret = jax.devices()[0].platform != "tpu"
    run = functools.partial(_splash_local, block=min(SPLASH_BLOCK, length), interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return run(q, k, v, mask.q_segments)
    rows = sharding.logical_to_spec(("batch",), sharding.current_rules())[0]
    heads = sharding.logical_to_spec(("q_heads",), sharding.current_rules())[0]
    spec = jax.sharding.PartitionSpec(rows, None, heads, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(rows, None)),
                         out_specs=spec, check_vma=False)(q, k, v, mask.q_segments)


def _splash_local(q, k, v, segments, *, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernels
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    b, t, heads, d = q.shape
    blocks = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = kernels.make_splash_mha(masks.MultiHeadMask([masks.CausalMask((t, t))] * heads), block_sizes=blocks,
                                     head_shards=1, q_seq_shards=1, interpret=interpret)
    heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # (b, heads, t, d), as the kernel takes
    out = jax.vmap(kernel)(heads_first(q * d**-0.5), heads_first(k), heads_first(v),
                           kernels.SegmentIds(segments, segments))
    return heads_first(out).astype(v.dtype)
