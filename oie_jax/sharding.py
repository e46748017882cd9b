"""Logical axis names to mesh axes: one table of rules per config.

Parameters name their axes (`embed`, `q_heads`, ...); a rule table maps each logical name to a
mesh axis, a tuple of mesh axes, or None (replicated). The same model then lays out on any mesh.
"""

from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from oie_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# FSDP shards the embedding dimension of every weight; tensor parallelism splits heads, the MLP and
# the vocabulary (Megatron style). Activations: batch over data and fsdp.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


def make_mesh(shape: Sequence[int], axes: Sequence[str] = MESH_AXES) -> jax.sharding.Mesh:
    """A device mesh whose axes are all Auto: XLA propagates shardings between the constraints we set
    (jax.make_mesh now defaults to Explicit axes, where every op must type-check its sharding)."""
    return jax.make_mesh(tuple(shape), tuple(axes), axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def logical_to_spec(logical_axes: Sequence[str | None], rules=DEFAULT_RULES) -> PartitionSpec:
    table = dict(rules)
    unknown = [name for name in logical_axes if name is not None and name not in table]
    if unknown:
        raise UserError(f"logical axes {unknown} have no sharding rule; add them to the rules table")
    spec = [table[name] if name is not None else None for name in logical_axes]
    used = [axis for entry in spec if entry for axis in ((entry,) if isinstance(entry, str) else entry)]
    if len(used) != len(set(used)):
        raise UserError(f"logical axes {tuple(logical_axes)} map a mesh axis twice: {spec}")
    return PartitionSpec(*spec)


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> dict:
    """NamedShardings for a model state, as the plain nested dict `load_params` and `jax.jit` take;
    checks that every sharded dimension divides evenly."""

    def sharding(var):
        spec = logical_to_spec(var.logical_axes, rules)
        for size, entry in zip(var.shape, spec):
            parts = 1
            for axis in (entry,) if isinstance(entry, str) else (entry or ()):
                parts *= mesh.shape[axis]
            if size % parts:
                raise UserError(f"dimension of size {size} ({var.logical_axes}) does not split {parts} ways on "
                                f"mesh {dict(mesh.shape)}")
        return var.replace(NamedSharding(mesh, spec))

    return nnx.to_pure_dict(jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))
