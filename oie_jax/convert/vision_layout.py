"""Where each Hugging Face CLIP / SigLIP vision tensor lives in oie_jax's ViT: the one table both
conversion directions read. Transposes, reshapes and one split (SigLIP's packed q/k/v of the pooling
head), so values are exact. Names are those `transformers` 5 writes for a vision-only model; whole
CLIP/SigLIP models (and vision-only files of older versions) put the tower under `vision_model.`, and
a whole model's other tensors (text tower, projections, logit scale) are not taken."""

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from oie_jax.models.vision import ViTConfig

PREFIX = "vision_model."
TOWER = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.", "head.")  # first parts of its names
LAYER_NAME = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
IGNORED = re.compile(r".*position_ids$")


@dataclass(frozen=True)
class Entry:
    paths: tuple[tuple[str, ...], ...]  # in the oie_jax tree (per-layer entries are stacked); one per part
    to_ours: Callable[[np.ndarray, ViTConfig], tuple[np.ndarray, ...]]  # one array per path
    to_hf: Callable[[tuple[np.ndarray, ...], ViTConfig], np.ndarray]


def _one(path, to_ours=lambda w, cfg: w, to_hf=lambda w, cfg: w) -> Entry:
    return Entry((path,), lambda w, cfg: (to_ours(w, cfg),), lambda parts, cfg: to_hf(parts[0], cfg))


def _linear(path) -> Entry:  # HF (out, in) <-> ours (in, out)
    return _one(path, lambda w, cfg: w.T, lambda w, cfg: w.T)


def _heads(path) -> Entry:  # HF (heads * head_dim, embed) <-> ours (embed, heads, head_dim)
    return _one(path, lambda w, cfg: w.T.reshape(cfg.hidden_size, cfg.num_heads, cfg.head_dim),
                lambda w, cfg: w.reshape(cfg.hidden_size, -1).T)


def _head_bias(path) -> Entry:  # (heads * head_dim,) <-> (heads, head_dim)
    return _one(path, lambda w, cfg: w.reshape(cfg.num_heads, cfg.head_dim), lambda w, cfg: w.reshape(-1))


def _out_heads(path) -> Entry:  # HF (embed, heads * head_dim) <-> ours (heads, head_dim, embed)
    return _one(path, lambda w, cfg: w.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size),
                lambda w, cfg: w.reshape(-1, cfg.hidden_size).T)


def _attention(prefix: tuple[str, ...], hf: str) -> dict[str, Entry]:
    return {
        f"{hf}q_proj.weight": _heads((*prefix, "q")), f"{hf}q_proj.bias": _head_bias((*prefix, "q_bias")),
        f"{hf}k_proj.weight": _heads((*prefix, "k")), f"{hf}k_proj.bias": _head_bias((*prefix, "k_bias")),
        f"{hf}v_proj.weight": _heads((*prefix, "v")), f"{hf}v_proj.bias": _head_bias((*prefix, "v_bias")),
        f"{hf}out_proj.weight": _out_heads((*prefix, "o")), f"{hf}out_proj.bias": _one((*prefix, "o_bias")),
    }


def _norm(prefix: tuple[str, ...], hf: str) -> dict[str, Entry]:
    return {f"{hf}.weight": _one((*prefix, "scale")), f"{hf}.bias": _one((*prefix, "bias"))}


def _mlp(prefix: tuple[str, ...], hf: str) -> dict[str, Entry]:
    return {f"{hf}fc1.weight": _linear((*prefix, "up")), f"{hf}fc1.bias": _one((*prefix, "up_bias")),
            f"{hf}fc2.weight": _linear((*prefix, "down")), f"{hf}fc2.bias": _one((*prefix, "down_bias"))}


# nn.MultiheadAttention packs q, k and v of SigLIP's pooling head into one (3 * embed, embed) weight.
def _packed(split: Entry, names) -> Entry:
    return Entry(tuple(names), lambda w, cfg: tuple(split.to_ours(part, cfg)[0] for part in np.split(w, 3)),
                 lambda parts, cfg: np.concatenate([split.to_hf((part,), cfg) for part in parts]))


def _packed_heads(prefix):
    return _packed(_heads(()), [(*prefix, n) for n in ("q", "k", "v")])


def _packed_bias(prefix):
    return _packed(_head_bias(()), [(*prefix, f"{n}_bias") for n in ("q", "k", "v")])


PER_LAYER = {
    **_norm(("layers", "attn_norm"), "layer_norm1"),
    **_attention(("layers", "attn"), "self_attn."),
    **_norm(("layers", "mlp_norm"), "layer_norm2"),
    **_mlp(("layers", "mlp"), "mlp."),
}


@functools.cache  # read for every tensor of a checkpoint
def top_level(cfg: ViTConfig) -> dict[str, Entry]:
    """The tensors outside the layers, for this layout (prefix `vision_model.` left out)."""
    patch = _one(("patch",), lambda w, cfg: w.transpose(2, 3, 1, 0), lambda w, cfg: w.transpose(3, 2, 0, 1))
    entries = {"embeddings.patch_embedding.weight": patch,
               "embeddings.position_embedding.weight": _one(("positions",))}
    if cfg.layout == "clip":
        entries["embeddings.class_embedding"] = _one(("class_token",))
        entries.update(_norm(("pre_norm",), "pre_layrnorm"))  # sic: Hugging Face's spelling
    else:
        entries["embeddings.patch_embedding.bias"] = _one(("patch_bias",))
    entries.update(_norm(("post_norm",), "post_layernorm"))
    if cfg.layout == "siglip":
        probe = _one(("head", "probe"), lambda w, cfg: w.reshape(-1), lambda w, cfg: w.reshape(1, 1, -1))
        entries["head.probe"] = probe
        entries["head.attention.in_proj_weight"] = _packed_heads(("head", "attn"))
        entries["head.attention.in_proj_bias"] = _packed_bias(("head", "attn"))
        entries["head.attention.out_proj.weight"] = _out_heads(("head", "attn", "o"))
        entries["head.attention.out_proj.bias"] = _one(("head", "attn", "o_bias"))
        entries.update(_norm(("head", "norm"), "head.layernorm"))
        entries.update(_mlp(("head", "mlp"), "head.mlp."))
    return entries


def tower_name(name: str) -> str | None:
    """A file's tensor name as a vision-only model names it; None outside the vision tower."""
    name = name.removeprefix(PREFIX)
    return name if name.startswith(TOWER) and not IGNORED.match(name) else None


def lookup(name: str, cfg: ViTConfig) -> tuple[Entry, int | None]:
    """The entry and layer index of a tower name; KeyError for a name the tower does not have."""
    entries = top_level(cfg)
    if name in entries:
        return entries[name], None
    match = LAYER_NAME.match(name)
    if match and match.group(2) in PER_LAYER and int(match.group(1)) < cfg.num_layers:
        return PER_LAYER[match.group(2)], int(match.group(1))
    raise KeyError(name)


def hf_names(cfg: ViTConfig) -> Iterator[tuple[str, Entry, int | None]]:
    """Every tensor of a Hugging Face vision tower of this config."""
    yield from ((name, entry, None) for name, entry in top_level(cfg).items())
    for layer in range(cfg.num_layers):
        for suffix, entry in PER_LAYER.items():
            yield f"encoder.layers.{layer}.{suffix}", entry, layer
