"""Logical axis names to mesh axes: one table of rules per config.

Parameters name their axes (`embed`, `q_heads`, ...); a rule table maps each logical name to a
mesh axis, a tuple of mesh axes, or None (replicated). The same model then lays out on any mesh.
"""

import contextlib
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

from oie_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# FSDP shards the embedding dimension of every weight; tensor parallelism splits heads, the MLP and
# the vocabulary (Megatron style). Activations: batch over data and fsdp.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("activation_embed", None),  # the residual stream between blocks: whole on every tensor shard
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),  # LoRA adapters: the small rank axis stays whole, the others split like their weight
    # vision encoders: small convolution kernels, position tables and classifiers stay whole
    ("kernel", None),
    ("channels", None),
    ("positions", None),
    ("classes", None),
    ("vision_embed", None),  # the input width of the multimodal projector (models/multimodal.py)
)


AUTO = jax.sharding.AxisType.Auto


def make_mesh(shape: Sequence[int], axes: Sequence[str] = MESH_AXES) -> jax.sharding.Mesh:
    """A device mesh whose axes are all Auto: XLA propagates shardings between the constraints we set
    (jax.make_mesh now defaults to Explicit axes, where every op must type-check its sharding)."""
    return jax.make_mesh(tuple(shape), tuple(axes), axis_types=(AUTO,) * len(axes))


def resolve_shape(shape: Sequence[int], devices: int, what: str = "mesh") -> tuple[int, ...]:
    """`shape` with its one -1 replaced so that the product is `devices`."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != len(MESH_AXES) or shape.count(-1) > 1 or any(n == 0 or n < -1 for n in shape):
        raise UserError(f"{what} shape {shape} must give {len(MESH_AXES)} sizes {MESH_AXES}, positive or one -1")
    known = math.prod(n for n in shape if n != -1)
    if -1 in shape:
        if devices % known:
            raise UserError(f"{what} shape {shape} cannot fill {devices} devices ({devices} % {known} != 0)")
        shape = tuple(devices // known if n == -1 else n for n in shape)
    if math.prod(shape) != devices:
        raise UserError(f"{what} shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                        f"there are {devices}")
    return shape


def mesh_from_config(shape: Sequence[int], dcn_shape: Sequence[int] | None = None,
                     devices=None) -> jax.sharding.Mesh:
    """The training mesh. `shape` lays out devices inside a slice (ICI); `dcn_shape`, when it is not all
    ones, repeats that layout across slices connected by the data-center network (multi-slice TPU,
    several GPU hosts): put `data` (or `fsdp`) there, the axes whose collectives tolerate DCN."""
    devices = jax.devices() if devices is None else devices
    dcn = tuple(int(n) for n in dcn_shape) if dcn_shape is not None else (1,) * len(MESH_AXES)
    if math.prod(dcn) == 1:
        return make_mesh(resolve_shape(shape, len(devices)), MESH_AXES)
    slices = math.prod(dcn)
    if len(devices) % slices:
        raise UserError(f"dcn shape {dcn} needs a multiple of {slices} devices, there are {len(devices)}")
    ici = resolve_shape(shape, len(devices) // slices, "ici")
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=devices[0].platform != "tpu")
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=(AUTO,) * len(MESH_AXES))


def abstract_mesh(shape: Sequence[int], devices: int) -> jax.sharding.AbstractMesh:
    """A mesh of `devices` devices that need not exist: for planning a run (shapes, shardings, memory)."""
    return jax.sharding.AbstractMesh(resolve_shape(shape, devices), MESH_AXES, axis_types=(AUTO,) * len(MESH_AXES))


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


def axis_size(mesh, entry) -> int:
    """How many ways a PartitionSpec entry (None, a mesh axis or a tuple of them) splits a dimension."""
    return math.prod(mesh.shape[axis] for axis in ((entry,) if isinstance(entry, str) else (entry or ())))


def param_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> dict:
    """NamedShardings for a model state, as the plain nested dict `load_params` and `jax.jit` take;
    checks that every sharded dimension divides evenly."""

    def sharding(var):
        spec = logical_to_spec(var.logical_axes, rules)
        for size, entry in zip(var.shape, spec):
            parts = axis_size(mesh, entry)
            if size % parts:
                raise UserError(f"dimension of size {size} ({var.logical_axes}) does not split {parts} ways on "
                                f"mesh {dict(mesh.shape)}")
        return var.replace(NamedSharding(mesh, spec))

    return nnx.to_pure_dict(jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def inference_shardings(state: nnx.State, devices=None, rules=DEFAULT_RULES, device_memory: int | None = None,
                        fraction: float = 0.5) -> dict:
    """Where a model for inference lives: whole on the first device when it takes at most `fraction` of
    that device's memory, else split over all `devices` (default: the local ones) by the rules (fsdp).
    `device_memory` defaults to what an accelerator reports; CPUs report none (they share the host's
    memory, where splitting gains nothing)."""
    devices = list(devices or jax.local_devices())
    if device_memory is None and devices[0].platform != "cpu":
        device_memory = (devices[0].memory_stats() or {}).get("bytes_limit")
    size = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize
               for v in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    if device_memory is None or size <= fraction * device_memory or len(devices) == 1:
        single = jax.sharding.SingleDeviceSharding(devices[0])
        return nnx.to_pure_dict(jax.tree.map(lambda v: v.replace(single), state,
                                             is_leaf=lambda x: isinstance(x, nnx.Variable)))
    mesh = jax.make_mesh((1, len(devices), 1), MESH_AXES, axis_types=(AUTO,) * len(MESH_AXES), devices=devices)
    return param_shardings(state, mesh, rules)


# ---- activations ---------------------------------------------------------------------------------

_activation_rules = DEFAULT_RULES


@contextlib.contextmanager
def activation_rules(rules):
    """The rules `constrain` uses while tracing inside this context (the model does not carry them)."""
    global _activation_rules
    previous, _activation_rules = _activation_rules, tuple(tuple(rule) for rule in rules)
    try:
        yield
    finally:
        _activation_rules = previous


def current_rules() -> tuple:
    return _activation_rules


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation to its logical layout on the current mesh (`jax.set_mesh`); a no-op without a
    mesh, so the model runs unchanged on one device and in generation."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, _activation_rules))


def process_row_blocks(batch: NamedSharding, rows: int,
                       process_of=lambda device: device.process_index) -> dict[int, slice]:
    """{process: the rows of a global batch its devices hold}: one contiguous block per process,
    disjoint from the others' (what each process's input pipeline feeds and
    `jax.make_array_from_process_local_data` expects). A mesh that puts the same rows on several
    processes, or one process's rows in pieces, is refused."""
    held: dict[int, set[int]] = {}
    for device, index in batch.devices_indices_map((rows,)).items():
        held.setdefault(process_of(device), set()).update(range(*index[0].indices(rows)))
    owners = {}
    for process, block in held.items():
        if max(block) - min(block) + 1 != len(block):
            raise UserError(f"process {process} holds rows {sorted(block)} of the batch, not one block: the mesh "
                            f"{dict(batch.mesh.shape)} interleaves processes along the batch axes")
        for row in block:
            owners.setdefault(row, []).append(process)
    shared = next((row for row, processes in sorted(owners.items()) if len(processes) > 1), None)
    if shared is not None:
        raise UserError(f"batch row {shared} sits on processes {owners[shared]}: the mesh {dict(batch.mesh.shape)} "
                        "replicates rows across hosts, whose input pipelines feed different rows; put the hosts "
                        "along a batch axis (data or fsdp, mesh.dcn_shape)")
    return {process: slice(min(block), max(block) + 1) for process, block in sorted(held.items())}


def batch_sharding(mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Batch rows over the mesh axes of the `batch` rule; the other dimensions whole."""
    return NamedSharding(mesh, logical_to_spec(("batch",), rules))


def bytes_per_device(abstract_tree, shardings) -> int:
    """Memory one device holds for a tree of shapes laid out by a matching tree of NamedShardings."""
    sizes = jax.tree.map(lambda a, s: math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize,
                         abstract_tree, shardings)
    return sum(jax.tree.leaves(sizes))
