"""`oie-jax train --dry-run`: the mesh, shardings and memory of a run for its target device count,
worked out from shapes alone (`jax.eval_shape` on an abstract mesh): no devices, no data, no weights."""

import math

import jax
import numpy as np
from ml_collections import ConfigDict

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.models.config import LlamaConfig
from oie_jax.train import validate
from oie_jax.train.build import abstract_state, make_optimizer, mesh_rules, model_config, rows_per_shard
from oie_jax.train.step import make_train_step, state_shardings

GIB = 1024**3


def activation_bytes(cfg: LlamaConfig, rows: int, seq_len: int, tensor: int) -> int:
    """A rough estimate of the activation memory of one device for `rows` local rows: what the
    backward pass keeps per layer under the remat policy, plus one layer's working set and the float32
    logits with their gradient."""
    width = np.dtype(cfg.dtype).itemsize
    tokens = rows * seq_len
    q, kv = cfg.num_heads * cfg.head_dim // tensor, cfg.num_kv_heads * cfg.head_dim // tensor
    matmul_outputs = tokens * (q + 2 * kv + cfg.hidden_size + 3 * cfg.intermediate_size // tensor) * width
    scores = rows * (cfg.num_heads // tensor) * seq_len * seq_len * 4  # float32 softmax
    layer = matmul_outputs + scores + 4 * tokens * cfg.hidden_size * width
    kept = {"full": tokens * cfg.hidden_size * width, "dots": matmul_outputs, "dots_no_batch": matmul_outputs,
            "none": layer}[cfg.remat]
    logits = 2 * tokens * cfg.vocab_size // tensor * 4
    return cfg.num_layers * kept + layer + logits


def plan(config: ConfigDict) -> str:
    validate.check_config(config)
    cfg, init = model_config(config.model, planning=True)
    warnings = []
    validate.check_precision(cfg, config.train, warn=warnings.append)
    devices = config.mesh.devices or jax.device_count()
    dcn = tuple(config.mesh.dcn_shape)
    slices = math.prod(dcn)
    if devices % slices:
        raise UserError(f"mesh.devices {devices} does not split into {slices} slices (mesh.dcn_shape {dcn})")
    ici = sharding.resolve_shape(config.mesh.shape, devices // slices, "ici")
    mesh = sharding.abstract_mesh(tuple(i * d for i, d in zip(ici, dcn)), devices)
    rules = mesh_rules(config)
    optimizer, _ = make_optimizer(config.train, total_steps=1000)  # the schedule does not change shapes
    shardings = state_shardings(cfg, optimizer, mesh, rules)
    state = abstract_state(cfg, optimizer, shardings)

    micro = config.train.micro_batches
    local_rows = rows_per_shard(config, mesh)
    shape = (config.data.batch_size, config.data.seq_len)
    rows = sharding.batch_sharding(mesh, rules)
    batch = {name: jax.ShapeDtypeStruct(shape, np.int32, sharding=rows)
             for name in ("tokens", "loss_mask", "segment_ids", "positions")}
    step = make_train_step(cfg, optimizer, micro, config.train.z_loss, config.train.loss_scale)
    with jax.sharding.use_abstract_mesh(mesh), sharding.activation_rules(rules):  # trace on the planned mesh
        jax.eval_shape(step, state, batch)

    params = sharding.bytes_per_device(state.params, shardings.params)
    moments = sharding.bytes_per_device(state.opt_state, shardings.opt_state)
    grads = params  # one gradient tree, laid out like the parameters
    activations = activation_bytes(cfg, local_rows, config.data.seq_len, mesh.shape["tensor"])
    total = params + moments + grads + activations
    lines = [
        f"dry run: {cfg.num_params() / 1e9:.2f}B-parameter LLaMA ({cfg.num_layers} layers), {cfg.param_dtype} weights, "
        f"{cfg.dtype} compute, remat {cfg.remat}"
        + ("" if init else f" (architecture of preset {config.model.preset!r})"),
        f"mesh: {dict(mesh.shape)} = {devices} devices" + (f" ({slices} slices over DCN {dcn})" if slices > 1 else ""),
        f"batch: {config.data.batch_size} x {config.data.seq_len} tokens, {micro} micro-batch(es), "
        f"{local_rows} row(s) per device per micro-batch",
        "train step traced on the planned mesh: shapes and shardings are consistent",
        "memory per device:",
        f"  parameters       {params / GIB:8.2f} GiB",
        f"  optimizer state  {moments / GIB:8.2f} GiB",
        f"  gradients        {grads / GIB:8.2f} GiB",
        f"  activations      {activations / GIB:8.2f} GiB (estimate)",
        f"  total            {total / GIB:8.2f} GiB",
    ]
    if config.mesh.device_memory_gb:
        room = config.mesh.device_memory_gb * 1e9
        lines.append(f"  device memory    {room / GIB:8.2f} GiB: "
                     + ("fits" if total < 0.9 * room else "DOES NOT FIT (more devices, remat, micro-batches)"))
    return "\n".join(warnings + lines)
