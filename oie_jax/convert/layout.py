"""Where each Hugging Face LLaMA tensor lives in oie_jax, and how it is reshaped: the one table both
conversion directions read. Every transform is a transpose and/or a reshape, so values are exact."""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from oie_jax.models.config import LlamaConfig

# Tensors some checkpoints carry that the model derives instead.
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]  # in the oie_jax parameter tree; per-layer entries are stacked
    to_ours: Callable[[np.ndarray, LlamaConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, LlamaConfig], np.ndarray]


def _same(w, cfg):
    return w


def _transposed(w, cfg):
    return w.T


# Projections into heads: HF (heads * head_dim, embed) <-> ours (embed, heads, head_dim).
def _split_heads(w, cfg):
    return w.T.reshape(cfg.hidden_size, -1, cfg.head_dim)


def _merge_heads(w, cfg):
    return w.reshape(cfg.hidden_size, -1).T


# Output projection: HF (embed, heads * head_dim) <-> ours (heads, head_dim, embed).
def _split_out_heads(w, cfg):
    return w.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size)


def _merge_out_heads(w, cfg):
    return w.reshape(-1, cfg.hidden_size).T


TOP_LEVEL = {
    "model.embed_tokens.weight": Entry(("embed",), _same, _same),
    "model.norm.weight": Entry(("final_norm", "scale"), _same, _same),
    "lm_head.weight": Entry(("lm_head",), _transposed, _transposed),
}
PER_LAYER = {
    "input_layernorm.weight": Entry(("layers", "attn_norm", "scale"), _same, _same),
    "self_attn.q_proj.weight": Entry(("layers", "attn", "q"), _split_heads, _merge_heads),
    "self_attn.k_proj.weight": Entry(("layers", "attn", "k"), _split_heads, _merge_heads),
    "self_attn.v_proj.weight": Entry(("layers", "attn", "v"), _split_heads, _merge_heads),
    "self_attn.o_proj.weight": Entry(("layers", "attn", "o"), _split_out_heads, _merge_out_heads),
    "post_attention_layernorm.weight": Entry(("layers", "mlp_norm", "scale"), _same, _same),
    "mlp.gate_proj.weight": Entry(("layers", "mlp", "gate"), _transposed, _transposed),
    "mlp.up_proj.weight": Entry(("layers", "mlp", "up"), _transposed, _transposed),
    "mlp.down_proj.weight": Entry(("layers", "mlp", "down"), _transposed, _transposed),
}


def value_at(params: dict, entry: Entry, layer: int | None = None):
    """The entry's array in a parameter tree (one layer's slice for per-layer entries)."""
    node = params
    for key in entry.path:
        node = node[key]
    return node if layer is None else node[layer]


def lookup(name: str, cfg: LlamaConfig) -> tuple[Entry, int | None] | None:
    """The entry and layer index of a Hugging Face tensor name; None for a name the model ignores."""
    if IGNORED.match(name) or (name == "lm_head.weight" and cfg.tie_word_embeddings):
        return None
    if name in TOP_LEVEL:
        return TOP_LEVEL[name], None
    match = LAYER_NAME.match(name)
    if match and match.group(2) in PER_LAYER and int(match.group(1)) < cfg.num_layers:
        return PER_LAYER[match.group(2)], int(match.group(1))
    raise KeyError(name)


def hf_names(cfg: LlamaConfig) -> Iterator[tuple[str, Entry, int | None]]:
    """Every tensor a Hugging Face checkpoint of this config holds, in the usual order."""
    yield "model.embed_tokens.weight", TOP_LEVEL["model.embed_tokens.weight"], None
    for layer in range(cfg.num_layers):
        for suffix, entry in PER_LAYER.items():
            yield f"model.layers.{layer}.{suffix}", entry, layer
    yield "model.norm.weight", TOP_LEVEL["model.norm.weight"], None
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", TOP_LEVEL["lm_head.weight"], None
