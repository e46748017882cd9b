"""LoRA adapters of the LLaMA's projections: the parameters, their use in the forward pass, and the
parameter-tree operations a run needs (split off the trainable adapters, join them to the frozen base,
merge them into the base weights for an export).

An adapter of weight `q` of shape (in..., out...) is `q_lora_a` (in..., rank) and `q_lora_b`
(rank, out...), in the same module and with the weight's logical axes plus `lora_rank`, so the adapters
are stacked over layers and sharded like their weight (`lora_rank` itself stays whole).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oie_jax.models.config import LORA_TARGETS, LlamaConfig, LoraConfig
from oie_jax.models.layers import project

SUFFIXES = ("_lora_a", "_lora_b")
RANK_AXIS = "lora_rank"
INPUT_DIMS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}  # leading input dims of each weight


def add_adapters(module: nnx.Module, lora: LoraConfig | None, rngs: nnx.Rngs, dtype) -> None:
    """Adapter parameters on `module` for each of its weights that `lora` targets: A drawn with the
    scale of a fan-in initialisation, B zero (the adapted model starts equal to the base)."""
    if lora is None:
        return
    for name in lora.targets:
        weight = getattr(module, name, None)
        if not isinstance(weight, nnx.Param):
            continue
        inputs = INPUT_DIMS[name]
        shape, axes = weight.shape, weight.logical_axes
        fan_in = math.prod(shape[:inputs])
        a = jax.random.normal(rngs.params(), (*shape[:inputs], lora.rank)) / math.sqrt(fan_in)
        setattr(module, name + "_lora_a", nnx.Param(a.astype(dtype), logical_axes=(*axes[:inputs], RANK_AXIS)))
        setattr(module, name + "_lora_b", nnx.Param(jnp.zeros((lora.rank, *shape[inputs:]), dtype),
                                                    logical_axes=(RANK_AXIS, *axes[inputs:])))


def adapted(module: nnx.Module, name: str, x: jax.Array, y: jax.Array, lora: LoraConfig | None,
            dropout_key: jax.Array | None = None) -> jax.Array:
    """`y` = x W plus the adapter's update of weight `name` when it has one: scale * dropout(x) A B, in
    the compute dtype of `y`. x is (batch, length, in...)."""
    if lora is None or name not in lora.targets:
        return y
    a = getattr(module, name + "_lora_a")[...]
    b = getattr(module, name + "_lora_b")[...]
    x = x.reshape(*x.shape[:2], -1)
    if dropout_key is not None and lora.dropout:
        keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, LORA_TARGETS.index(name)),
                                    1 - lora.dropout, x.shape)
        x = jnp.where(keep, x / (1 - lora.dropout), 0).astype(x.dtype)
    down = project(x, a.reshape(-1, lora.rank).astype(y.dtype))
    return y + (lora.scale * project(down, b.astype(y.dtype))).astype(y.dtype).reshape(y.shape)


def num_adapter_params(cfg: LlamaConfig) -> int:
    """Trainable parameters at cfg.lora: rank * (in + out) per targeted weight per layer."""
    e, m = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    sizes = {"q": (e, q), "k": (e, kv), "v": (e, kv), "o": (q, e), "gate": (e, m), "up": (e, m), "down": (m, e)}
    return cfg.num_layers * sum(cfg.lora.rank * sum(sizes[t]) for t in cfg.lora.targets)


def is_adapter(name: str) -> bool:
    return name.endswith(SUFFIXES)


def split(params: dict) -> tuple[dict, dict]:
    """(adapters, everything else) of a parameter tree, each with the nesting of `params`."""
    adapters, rest = {}, {}
    for key, value in params.items():
        if isinstance(value, dict):
            a, r = split(value)
            if a:
                adapters[key] = a
            if r:
                rest[key] = r
        elif is_adapter(key):
            adapters[key] = value
        else:
            rest[key] = value
    return adapters, rest


def join(base: dict, adapters: dict) -> dict:
    """One tree of the base parameters and the adapters (split's inverse)."""
    joined = dict(base)
    for key, value in adapters.items():
        joined[key] = join(joined.get(key, {}), value) if isinstance(value, dict) else value
    return joined


def merge(cfg: LlamaConfig, params: dict) -> tuple[LlamaConfig, dict]:
    """(the plain config, the parameters with every adapter folded into its weight: W + scale A B) of an
    adapted model's full parameter tree. Computed in float32 and stored in each weight's dtype; numpy
    arrays stay numpy (an export on the host), jax arrays stay on their devices."""
    if cfg.lora is None:
        return cfg, params
    adapters, base = split(params)

    def fold(node: dict, adapter_node: dict) -> dict:
        node = dict(node)
        for key, value in adapter_node.items():
            if isinstance(value, dict):
                node[key] = fold(node[key], value)
        for name in {key.removesuffix(s) for key in adapter_node for s in SUFFIXES if key.endswith(s)}:
            a, b, w = adapter_node[name + "_lora_a"], adapter_node[name + "_lora_b"], node[name]
            xp = np if isinstance(w, np.ndarray) else jnp
            layers, rank = a.shape[0], cfg.lora.rank
            delta = xp.matmul(xp.asarray(a, np.float32).reshape(layers, -1, rank),
                              xp.asarray(b, np.float32).reshape(layers, rank, -1))
            node[name] = (xp.asarray(w, np.float32) + cfg.lora.scale * delta.reshape(w.shape)).astype(w.dtype)
        return node

    return cfg.replace(lora=None), fold(base, adapters)
