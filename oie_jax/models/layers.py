"""Pieces the LLaMA and the vision encoders share: matmuls over flattened tokens, layers stacked on a
leading `layers` axis (run with `jax.lax.scan`), and the rematerialisation policies of a block."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

CHECKPOINT_POLICIES = {  # config.remat name -> what jax.checkpoint may keep
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def project(x: jax.Array, w: jax.Array, **dot_kwargs) -> jax.Array:
    """x (batch, length, w.shape[0]) times a weight w (in, *out) -> (batch, length, *out), as one 2-D
    matmul over the flattened tokens: XLA's CPU backward runs 3-D einsums ~1.5x slower (transposes)."""
    b, t, _ = x.shape
    out = jnp.matmul(x.reshape(b * t, -1), w.reshape(w.shape[0], -1), **dot_kwargs)
    return out.reshape(b, t, *w.shape[1:])


def param(rngs: nnx.Rngs, shape, logical_axes, dtype, scale: float | None = 0.02) -> nnx.Param:
    """A parameter drawn from N(0, scale^2), or ones when scale is None (norm scales)."""
    if scale is None:
        value = jnp.ones(shape, dtype)
    elif scale == 0:
        value = jnp.zeros(shape, dtype)
    else:
        value = (scale * jax.random.normal(rngs.params(), shape)).astype(dtype)
    return nnx.Param(value, logical_axes=logical_axes)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def stacked(make: Callable[[nnx.Rngs], nnx.Module], count: int, rngs: nnx.Rngs) -> nnx.Module:
    """One module built by `make` whose parameters have a leading `layers` axis of size `count`."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    keys = jax.random.split(rngs.params(), count)
    state = jax.vmap(lambda key: nnx.split(make(nnx.Rngs(key)))[1])(keys)
    state = jax.tree.map(lambda v: v.replace(logical_axes=("layers", *v.logical_axes)), state, is_leaf=_is_variable)
    return nnx.merge(graphdef, state)


def scan_layers(layers: nnx.Module, x: jax.Array, apply: Callable, remat: str, per_layer=None) -> jax.Array:
    """x through the stacked `layers` one after another: `apply(block, x)` -> x, under the remat policy;
    `apply(block, x, per_layer[i])` when `per_layer` (arrays with a leading layers axis) is given."""
    graphdef, state = nnx.split(layers)

    def body(x, inputs):
        layer_state, extra = inputs
        block = nnx.merge(graphdef, layer_state)
        return (apply(block, x) if per_layer is None else apply(block, x, extra)), None

    if remat != "none":
        body = jax.checkpoint(body, policy=CHECKPOINT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(body, x, (state, per_layer))[0]
