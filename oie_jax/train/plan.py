"""`oie-jax train --dry-run`: the mesh, shardings, attention kernel and memory of a run for its target
platform and device count, worked out from shapes alone (`jax.eval_shape` on an abstract mesh): no
devices, no data, no weights."""

import math

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from oie_jax import sharding
from oie_jax.data.pipeline import BATCH_FIELDS
from oie_jax.errors import UserError
from oie_jax.host_memory import resident_bytes
from oie_jax.models import attention, encoders
from oie_jax.models.checkpoint import abstract_params
from oie_jax.models.config import LlamaConfig
from oie_jax.models.lora import num_adapter_params
from oie_jax.models.multimodal import MultimodalConfig, Projector
from oie_jax.models.vision import ViTConfig
from oie_jax.train import step as step_module
from oie_jax.train import validate
from oie_jax.train.build import (
    abstract_state,
    lora_base_dtype,
    make_optimizer,
    mesh_rules,
    model_config,
    rows_per_shard,
    vision_config,
    with_lora,
)
from oie_jax.train.step import frozen_shardings, make_train_step, state_shardings

GIB = 1024**3
FUSED = ("cudnn", "splash")  # kernels that never hold the score matrix


def activation_bytes(cfg: LlamaConfig, rows: int, seq_len: int, tensor: int, loss_chunk: int = 0) -> dict[str, int]:
    """An estimate of the activation memory of one device for `rows` local rows, in three parts: what
    the backward pass keeps of every layer under the remat policy, one layer's working set, and the
    float32 logits with their gradient (`loss_chunk` positions at a time, plus the head's gradient
    summed over the chunks). Checked against XLA's own numbers in tests/test_plan.py."""
    width = np.dtype(cfg.dtype).itemsize
    tokens = rows * seq_len
    hidden, inner = cfg.hidden_size, cfg.intermediate_size // tensor
    q, kv = cfg.num_heads * cfg.head_dim // tensor, cfg.num_kv_heads * cfg.head_dim // tensor
    matmuls = tokens * (q + 2 * kv + 2 * inner + 2 * hidden) * width  # q k v, gate up, o down
    elementwise = tokens * (q + kv + 2 * inner + 3 * hidden) * width  # rotated q k, silu and product, norms
    scores = 0 if cfg.attention in FUSED else 2 * rows * (cfg.num_heads // tensor) * seq_len**2 * 4  # float32
    layer = matmuls + elementwise + scores
    kept = {"full": tokens * hidden * width, "dots": matmuls, "dots_no_batch": matmuls, "none": layer}[cfg.remat]
    vocab = cfg.vocab_size // tensor
    logits = 2 * rows * (loss_chunk or seq_len) * vocab * 4
    if loss_chunk:
        logits += vocab * hidden * 4
    return {"layers": cfg.num_layers * kept, "layer": layer, "logits": logits}


def vision_activation_bytes(cfg, images: int, size: tuple[int, int], trainable: bool) -> int:
    """An estimate of the image encoder's activation memory on one device for `images` images: one
    layer's working set when frozen (no backward), every layer's when trained (remat none; the block
    inputs only under full remat). A scanned ViT also holds one layer's weights, sliced out of the stack."""
    width = np.dtype(cfg.dtype).itemsize
    if isinstance(cfg, ViTConfig):
        tokens = (size[0] // cfg.patch_size) * (size[1] // cfg.patch_size) + cfg.class_token
        e, m = cfg.hidden_size, cfg.intermediate_size
        residual = tokens * e * width  # one image's (tokens, embed) array
        attention = 6 * residual + cfg.num_heads * tokens**2 * 4  # q k v, out, norm, residual; float32 scores
        mlp = tokens * 2 * m * width  # the MLP's two
        weights = (4 * e * e + 2 * e * m) * np.dtype(cfg.param_dtype).itemsize
        if not trainable:  # the attention's buffers are freed before the MLP's: the larger, beside the residual
            return images * max(attention, mlp + residual) + weights
        layer = images * (attention + mlp) + weights
        kept = images * residual if cfg.remat == "full" else layer
        return cfg.num_layers * kept + layer
    height, wide = size[0] // 2, size[1] // 2  # after the stem
    blocks = []
    for channels_in, expansion, channels_out, stride in cfg.blocks:
        before = (height + 2) * (wide + 2)  # the depthwise convolution's padded input
        height, wide = -(-height // stride), -(-wide // stride)
        hidden = channels_in * expansion
        blocks.append(images * width * (2 * hidden * before + hidden * height * wide + channels_out * height * wide))
    return sum(blocks) if trainable else max(blocks)


def vision_plan(config: ConfigDict, mesh, rules, rows_per_device: int,
                text_width: int) -> tuple[list[str], dict[str, int]]:
    """The report lines and memory parts per device of the run's image encoder (none without one): its
    parameters laid out by the rules, its forward traced on the planned mesh for the images of every row
    (one; a multimodal run's `images_per_row`); of a multimodal run, also its image tokens and the
    projector to the LLaMA's `text_width`."""
    cfg, init = vision_config(config.vision, planning=True)
    if cfg is None:
        return [], {}
    per_row = config.multimodal.images_per_row if config.multimodal.enabled else 1
    images_per_device = rows_per_device * per_row
    size = encoders.preprocess_for(cfg, init).size
    if config.vision.image_size:
        size = (config.vision.image_size,) * 2
    graphdef, state = nnx.split(nnx.eval_shape(lambda: encoders.build(cfg, nnx.Rngs(0))))
    shardings = sharding.param_shardings(state, mesh, rules)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nnx.to_pure_dict(state), shardings)
    images = jax.ShapeDtypeStruct((config.data.batch_size * per_row, *size, 3), np.float32,
                                  sharding=sharding.batch_sharding(mesh, rules))

    def forward(params, images):
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)(images)

    with jax.sharding.use_abstract_mesh(mesh), sharding.activation_rules(rules):
        grid = jax.eval_shape(forward, params, images).grid
    trainable = config.vision.trainable
    weights = sharding.bytes_per_device(params, shardings)
    parts = {"vision weights": weights}
    if trainable:
        parts["vision optimizer"] = 2 * weights * 4 // np.dtype(cfg.param_dtype).itemsize  # float32 Adam moments
        parts["vision gradients"] = weights
    parts["vision activations"] = vision_activation_bytes(cfg, images_per_device, size, trainable)
    layout = {}
    for variable in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        for name, axes in zip(variable.logical_axes, sharding.logical_to_spec(variable.logical_axes, rules)):
            layout.setdefault(name, axes)
    split = ", ".join(f"{name} over {axes}" for name, axes in layout.items() if axes)
    whole = ", ".join(name for name, axes in layout.items() if not axes)
    what = (f"{cfg.layout} ViT ({cfg.num_layers} layers, patch {cfg.patch_size})" if isinstance(cfg, ViTConfig)
            else "MobileNetV2")
    lines = [
        f"vision encoder: {encoders.num_params(cfg) / 1e6:.1f}M-parameter {what} at {size[0]}x{size[1]}, "
        f"{cfg.param_dtype} weights, {cfg.dtype} compute, {'trained' if trainable else 'frozen'}"
        + ("" if init else f" (architecture of preset {config.vision.preset!r})"),
        f"  {per_row} image{'s' * (per_row > 1)} per row, {images_per_device} per device; "
        f"grid {'x'.join(map(str, grid.shape[1:]))}; "
        "forward traced on the planned mesh",
        f"  sharding: {split or 'nothing split'}; whole on every device: {whole}",
    ]
    if config.multimodal.enabled:  # the projector always trains: weights, two Adam moments, gradients
        multimodal = MultimodalConfig(0, pool=config.multimodal.pool)
        tokens = multimodal.image_tokens(cfg, size)
        shapes = nnx.eval_shape(lambda: Projector(encoders.vision_width(cfg), text_width, multimodal, rngs=nnx.Rngs(0)))
        count = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(shapes)))
        projector = count * np.dtype(config.model.param_dtype or "float32").itemsize
        parts.update({"projector weights": projector, "projector moments": 2 * count * 4,
                      "projector gradients": projector})
        lines.append(f"  {tokens} image tokens after each record's BOS (rows of data.seq_len {config.data.seq_len}), "
                     f"projector {count / 1e6:.1f}M parameters, trained")
    return lines, parts


def kernel(config: ConfigDict, cfg: LlamaConfig) -> tuple[str, str]:
    """(the attention kernel a run of `config` uses, the one the dry run traces here in its place)."""
    platform = config.mesh.platform or jax.devices()[0].platform
    chosen = attention.resolve(cfg.attention, platform, cfg.dtype)
    # cuDNN's kernel cannot be traced without a GPU; the XLA kernel has the same shapes.
    traced = "xla" if chosen == "cudnn" and jax.devices()[0].platform != "gpu" else chosen
    return chosen, traced


def host_bytes(config: ConfigDict, parts: dict[str, int]) -> int | None:
    """Resident host memory a run planned for this host's CPU devices is expected to peak at: this
    process's own (Python, XLA, the input pipeline's TensorFlow: imported by now) plus the plan's total
    for every local device, since CPU devices share the host's memory; None for any other plan."""
    resident = resident_bytes()
    devices = config.mesh.devices or jax.device_count()
    if resident is None or not on_this_host(config, devices) or jax.devices()[0].platform != "cpu":
        return None
    return resident["now"] + devices * parts["total"]


def on_this_host(config: ConfigDict, devices: int) -> bool:
    return devices == jax.device_count() and (not config.mesh.platform
                                              or config.mesh.platform == jax.devices()[0].platform)


def memory(config: ConfigDict) -> dict[str, int]:
    """Bytes per device of the run `config` describes, by part, with their "total"."""
    return _plan(config, compile_here=False)[1]


def plan(config: ConfigDict, compile_here: bool = True) -> str:
    """The dry-run report. When the run is planned for this host's devices, the real train step is also
    compiled here and XLA's own memory figure printed beside the estimate."""
    return _plan(config, compile_here)[0]


def abstract_step(config: ConfigDict, cfg: LlamaConfig, mesh) -> tuple:
    """(train step, abstract state, abstract batch, abstract frozen parameters, state shardings, rules) of
    `config` on `mesh` (an abstract mesh for the plan, real devices for XLA's figure)."""
    rules = mesh_rules(config)
    optimizer, _ = make_optimizer(config.train, total_steps=1000)  # the schedule does not change shapes
    shardings = state_shardings(cfg, optimizer, mesh, rules)
    base_dtype = lora_base_dtype(cfg, config.train)
    frozen = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, base_dtype, sharding=s),
                          step_module.frozen(cfg, abstract_params(cfg)), frozen_shardings(cfg, mesh, rules))
    rows = sharding.batch_sharding(mesh, rules)
    batch = {name: jax.ShapeDtypeStruct((config.data.batch_size, config.data.seq_len), np.int32, sharding=rows)
             for name in BATCH_FIELDS}
    train = config.train
    step = make_train_step(cfg, optimizer, train.micro_batches, train.z_loss, train.loss_scale, train.loss_chunk,
                           train.seed)
    return step, abstract_state(cfg, optimizer, shardings), batch, frozen, shardings, rules


def xla_memory(config: ConfigDict, devices: int | None = None) -> dict[str, int]:
    """What XLA allocates per device for the real train step of `config` compiled on this host's first
    `devices` devices (default all): arguments (parameters, optimizer state, batch), temporaries, total."""
    cfg, _ = model_config(config.model, planning=True)
    cfg = with_lora(cfg, config.train).replace(attention=kernel(config, cfg)[1])
    local = jax.devices()[: devices or jax.device_count()]
    mesh = sharding.mesh_from_config(config.mesh.shape, config.mesh.dcn_shape, devices=local)
    step, state, batch, frozen, _, rules = abstract_step(config, cfg, mesh)
    with jax.set_mesh(mesh), sharding.activation_rules(rules):
        analysis = jax.jit(step, donate_argnums=0).lower(state, batch, frozen).compile().memory_analysis()
    sizes = {"arguments": analysis.argument_size_in_bytes, "temporaries": analysis.temp_size_in_bytes}
    return {**sizes, "total": sum(sizes.values())}


def _plan(config: ConfigDict, compile_here: bool) -> tuple[str, dict[str, int]]:
    validate.check_config(config)
    cfg, init = model_config(config.model, planning=True)
    cfg = with_lora(cfg, config.train)
    warnings = []
    validate.check_precision(cfg, config.train, warn=warnings.append)
    chosen, traced = kernel(config, cfg)
    cfg = cfg.replace(attention=chosen)
    devices = config.mesh.devices or jax.device_count()
    dcn = tuple(config.mesh.dcn_shape)
    slices = math.prod(dcn)
    if devices % slices:
        raise UserError(f"mesh.devices {devices} does not split into {slices} slices (mesh.dcn_shape {dcn})")
    ici = sharding.resolve_shape(config.mesh.shape, devices // slices, "ici")
    mesh = sharding.abstract_mesh(tuple(i * d for i, d in zip(ici, dcn)), devices)
    local_rows = rows_per_shard(config, mesh)
    step, state, batch, frozen, shardings, rules = abstract_step(config, cfg.replace(attention=traced), mesh)
    with jax.sharding.use_abstract_mesh(mesh), sharding.activation_rules(rules):  # trace on the planned mesh
        jax.eval_shape(step, state, batch, frozen)

    train = config.train
    params = sharding.bytes_per_device(state.params, shardings.params)
    parts = {"parameters": params,
             **({"frozen base": sharding.bytes_per_device(frozen, jax.tree.map(lambda a: a.sharding, frozen))}
                if cfg.lora else {}),
             "optimizer state": sharding.bytes_per_device(state, shardings) - params,  # moments and step count
             "batch": sharding.bytes_per_device(batch, {name: a.sharding for name, a in batch.items()}),
             # one gradient tree laid out like the parameters, and one more summing the micro-batches
             "gradients": params * (2 if train.micro_batches > 1 else 1)}
    activations = activation_bytes(cfg, local_rows, config.data.seq_len, mesh.shape["tensor"], train.loss_chunk)
    parts["activations"] = sum(activations.values())
    vision_lines, vision_parts = vision_plan(config, mesh, rules, local_rows, cfg.hidden_size)
    parts.update(vision_parts)
    parts["total"] = sum(parts.values())
    logits = (f"logits of {train.loss_chunk} positions at a time" if train.loss_chunk
              else "logits of whole rows")
    lines = [
        f"dry run: {cfg.num_params() / 1e9:.2f}B-parameter LLaMA ({cfg.num_layers} layers), {cfg.param_dtype} weights, "
        f"{cfg.dtype} compute, remat {cfg.remat}"
        + ("" if init else f" (architecture of preset {config.model.preset!r})"),
        *([f"LoRA: rank {cfg.lora.rank} on {', '.join(cfg.lora.targets)}, {num_adapter_params(cfg) / 1e6:,.1f}M "
           f"trained parameters; the base frozen in {lora_base_dtype(cfg, config.train)}"]
          if cfg.lora else []),
        f"mesh: {dict(mesh.shape)} = {devices} devices" + (f" ({slices} slices over DCN {dcn})" if slices > 1 else ""),
        f"attention: {chosen} (model.attention {config.model.attention or 'auto'!r} on "
        f"{config.mesh.platform or jax.devices()[0].platform})"
        + (f"; traced here with the {traced} kernel, same shapes" if traced != chosen else ""),
        f"batch: {config.data.batch_size} x {config.data.seq_len} tokens, {train.micro_batches} micro-batch(es), "
        f"{local_rows} row(s) per device per micro-batch; loss over {logits}",
        "train step traced on the planned mesh: shapes and shardings are consistent",
        *vision_lines,
        "memory per device:",
        *(f"  {name:<18} {size / GIB:8.2f} GiB" for name, size in parts.items() if name not in vision_parts
          and name != "total"),
        "    " + ", ".join(f"{name} {size / GIB:.2f}" for name, size in
                           zip(("layers kept", "one layer", "logits"), activations.values())) + " (estimate)",
        *(f"  {name:<18} {size / GIB:8.2f} GiB" for name, size in vision_parts.items()),
        f"  {'total':<18} {parts['total'] / GIB:8.2f} GiB",
    ]
    host = host_bytes(config, parts)
    if host is not None:
        lines.append(f"  host memory, resident at the peak: {host / GIB:.2f} GiB (this process's Python, XLA and "
                     f"TensorFlow {(host - devices * parts['total']) / GIB:.2f} GiB + {devices} CPU device(s))")
    if compile_here and traced == chosen and on_this_host(config, devices):
        analysis = xla_memory(config)
        lines.append(f"  XLA, compiled for the {devices} local devices: arguments {analysis['arguments'] / GIB:.2f} "
                     f"GiB + temporaries {analysis['temporaries'] / GIB:.2f} GiB = {analysis['total'] / GIB:.2f} GiB"
                     + (" (the LLaMA's train step alone)" if vision_parts else ""))
    if config.mesh.device_memory_gb:
        room = config.mesh.device_memory_gb * 1e9
        lines.append(f"  {'device memory':<18} {room / GIB:8.2f} GiB: "
                     + ("fits" if parts["total"] < 0.9 * room else "DOES NOT FIT (more devices, remat, micro-batches)"))
    return "\n".join(warnings + lines), parts
