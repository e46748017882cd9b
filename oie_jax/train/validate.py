"""Every field of a training config checked before anything is read or compiled: one line that names
the field and what it needs, never a ZeroDivisionError ten minutes in. Also the checks of mixed
precision that depend on the resolved model config."""

import sys

from ml_collections import ConfigDict

from oie_jax.data import holdout
from oie_jax.data.sources.registry import SOURCES
from oie_jax.errors import UserError
from oie_jax.models.config import ATTENTION, LORA_TARGETS, PRESETS, LlamaConfig
from oie_jax.models.encoders import PRESETS as VISION_PRESETS
from oie_jax.models.policies import DTYPES, REMAT_POLICIES
from oie_jax.sharding import MESH_AXES

LR_FLOOR_FOR_BF16_WEIGHTS = 1e-4


def _between(low, high):
    return lambda v: low <= v <= high


# (field, test, what the field needs)
RULES = (
    ("model.preset", lambda v: v in ("", *PRESETS), f"one of {sorted(PRESETS)} or ''"),
    ("model.param_dtype", lambda v: v in ("", *DTYPES), f"one of {DTYPES} or ''"),
    ("model.dtype", lambda v: v in ("", *DTYPES), f"one of {DTYPES} or ''"),
    ("model.remat", lambda v: v in ("", *REMAT_POLICIES), f"one of {REMAT_POLICIES} or ''"),
    ("data.source", lambda v: v in ("auto", *SOURCES), f"auto or one of {', '.join(SOURCES)}"),
    ("data.train", lambda v: bool(v.strip()), "a corpus (sample:train, files, directories or globs)"),
    ("data.seq_len", lambda v: v >= 2, ">= 2"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.mixture_temperature", lambda v: v > 0, "> 0"),
    ("train.epochs", lambda v: v >= 0, ">= 0"),
    ("train.steps", lambda v: v >= 0, ">= 0"),
    ("train.steps_limit", lambda v: v >= 0, ">= 0 (0 = no limit)"),
    ("train.lr", lambda v: v > 0, "> 0"),
    ("train.warmup_fraction", _between(0, 1), "between 0 and 1"),
    ("train.decay", lambda v: v in ("cosine", "linear", "constant"), "cosine, linear or constant"),
    ("train.end_fraction", _between(0, 1), "between 0 and 1"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0"),
    ("train.clip_norm", lambda v: v >= 0, ">= 0 (0 = no clipping)"),
    ("train.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.micro_batches", lambda v: v >= 1, ">= 1"),
    ("train.z_loss", lambda v: v >= 0, ">= 0"),
    ("train.loss_scale", lambda v: v >= 0, ">= 0 (0 = none)"),
    ("train.loss_chunk", lambda v: v >= 0, ">= 0 (0 = the whole sequence)"),
    ("train.lora.rank", lambda v: v >= 0, ">= 0 (0 = full fine-tuning)"),
    ("train.lora.alpha", lambda v: v > 0, "> 0"),
    ("train.lora.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.lora.targets", lambda v: bool(v) and set(v) <= set(LORA_TARGETS), f"one or more of {LORA_TARGETS}"),
    ("train.lora.base_dtype", lambda v: v in ("", *DTYPES), f"one of {DTYPES} or ''"),
    ("model.attention", lambda v: v in ("", *ATTENTION), f"one of {ATTENTION} or ''"),
    ("vision.preset", lambda v: v in ("", *VISION_PRESETS), f"one of {sorted(VISION_PRESETS)} or ''"),
    ("vision.param_dtype", lambda v: v in ("", *DTYPES), f"one of {DTYPES} or ''"),
    ("vision.dtype", lambda v: v in ("", *DTYPES), f"one of {DTYPES} or ''"),
    ("vision.remat", lambda v: v in ("", *REMAT_POLICIES), f"one of {REMAT_POLICIES} or ''"),
    ("vision.image_size", lambda v: v >= 0, ">= 0 (0 = the model's)"),
    ("vision.resize", lambda v: v in ("", "squash", "pad", "crop"), "squash, pad, crop or ''"),
    ("grounding.llama", lambda v: v in ("frozen", "lora", "full"), "frozen, lora or full"),
    ("grounding.size", lambda v: v >= 1, ">= 1"),
    ("grounding.l1_weight", lambda v: v >= 0, ">= 0"),
    ("grounding.giou_weight", lambda v: v >= 0, ">= 0"),
    ("grounding.lm_weight", lambda v: v >= 0, ">= 0"),
    ("multimodal.llama", lambda v: v in ("frozen", "lora", "full"), "frozen, lora or full"),
    ("multimodal.pool", lambda v: v >= 1, ">= 1"),
    ("multimodal.images_per_row", lambda v: v >= 1, ">= 1"),
    ("mesh.platform", lambda v: v in ("", "tpu", "gpu", "cpu"), "tpu, gpu, cpu or ''"),
    ("mesh.shape", lambda v: len(v) == len(MESH_AXES), f"{len(MESH_AXES)} sizes {MESH_AXES}"),
    ("mesh.dcn_shape", lambda v: len(v) == len(MESH_AXES) and all(n >= 1 for n in v),
     f"{len(MESH_AXES)} positive sizes {MESH_AXES}"),
    ("mesh.devices", lambda v: v >= 0, ">= 0 (0 = the devices present)"),
    ("mesh.device_memory_gb", lambda v: v >= 0, ">= 0"),
    ("checkpoint.every", lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    ("checkpoint.keep", lambda v: v >= 1, ">= 1"),
    ("checkpoint.best_mode", lambda v: v in ("min", "max"), "min or max"),
    ("eval.every", lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    ("eval.f1_every", lambda v: v >= 0, ">= 0 (0 = never)"),
    ("eval.f1_examples", lambda v: v >= 0, ">= 0 (0 = all)"),
    ("eval.max_new_tokens", lambda v: v >= 0, ">= 0 (0 = from the data)"),
    ("eval.batch_size", lambda v: v >= 1, ">= 1"),
    ("log.every", lambda v: v >= 1, ">= 1"),
)


def field(config: ConfigDict, name: str):
    node = config
    for part in name.split("."):
        node = node[part]
    return node


def type_name(value) -> str:
    return {bool: "a bool", int: "an int", float: "a number", str: "a string", tuple: "a tuple"}.get(
        type(value), type(value).__name__)


def fits(value, default) -> bool:
    """Whether `value` has the type of the field whose default is `default` (bool is not an int here)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def check_types(config: ConfigDict) -> None:
    """Every field of `base_config` is present and of its type: an int where an int is expected, a bool
    where a bool is (ConfigDict itself lets True into an int field, and a config file may build its
    sections anew)."""
    from oie_jax.train.defaults import base_config

    def walk(default: ConfigDict, given, prefix: str):
        for name, value in default.items():
            path = f"{prefix}{name}"
            if not isinstance(given, ConfigDict) or name not in given:
                raise UserError(f"config field {path} is missing")
            if isinstance(value, ConfigDict):
                walk(value, given[name], f"{path}.")
            elif not fits(given[name], value):
                raise UserError(f"config field {path} = {given[name]!r}: needs {type_name(value)}, not "
                                f"{type_name(given[name])}")

    walk(base_config(), config, "")


def check_config(config: ConfigDict) -> None:
    """A UserError for the first field that is missing, of the wrong type or out of its range, or fields
    that do not fit together."""
    check_types(config)
    for name, test, need in RULES:
        value = field(config, name)
        if not test(value):
            raise UserError(f"config field {name} = {value!r}: needs {need}")
    if not config.train.epochs and not config.train.steps:
        raise UserError("config fields train.epochs and train.steps are both 0: the run would have no step")
    if config.data.batch_size % config.train.micro_batches:
        raise UserError(f"config field train.micro_batches = {config.train.micro_batches} does not divide "
                        f"data.batch_size = {config.data.batch_size}")
    chunk = config.train.loss_chunk
    if chunk and chunk < config.data.seq_len and config.data.seq_len % chunk:
        raise UserError(f"config field train.loss_chunk = {chunk} does not divide data.seq_len = "
                        f"{config.data.seq_len}")
    if config.grounding.enabled:
        if not (config.vision.init or config.vision.preset):
            raise UserError("config field grounding.enabled: a grounding run needs an image encoder (vision.init or "
                            "vision.preset)")
        if not config.grounding.images:
            raise UserError("config field grounding.images: a grounding run needs the directory of its images")
        if not (config.grounding.cells or config.grounding.proposals):
            raise UserError("config field grounding.cells: with cells=False the head's candidates are the proposals; "
                            "set grounding.proposals")
        if config.train.micro_batches != 1:
            raise UserError("config field train.micro_batches: a grounding run takes whole batches (1)")
        if (config.grounding.llama == "lora") != bool(config.train.lora.rank):
            raise UserError("config fields grounding.llama and train.lora.rank: LoRA adapters of the LLaMA in a "
                            "grounding run take both, grounding.llama = 'lora' and the adapters' train.lora.rank > 0")
    if config.multimodal.enabled:
        if config.grounding.enabled:
            raise UserError("config fields grounding.enabled and multimodal.enabled: one kind of run at a time")
        if not (config.vision.init or config.vision.preset):
            raise UserError("config field multimodal.enabled: a multimodal run needs an image encoder (vision.init or "
                            "vision.preset)")
        if not config.multimodal.images:
            raise UserError("config field multimodal.images: a multimodal run needs the directory of its images")
        if config.train.micro_batches != 1:
            raise UserError("config field train.micro_batches: a multimodal run takes whole batches (1)")
        if (config.multimodal.llama == "lora") != bool(config.train.lora.rank):
            raise UserError("config fields multimodal.llama and train.lora.rank: LoRA adapters of the LLaMA in a "
                            "multimodal run take both, multimodal.llama = 'lora' and the adapters' train.lora.rank > 0")
    try:
        holdout.parse_spec(config.data.dev)
    except ValueError as exc:
        raise UserError(f"config field data.dev: {exc}") from None
    known = set(MESH_AXES)
    for rule in config.mesh.rules:
        axes = rule[1] if len(rule) == 2 else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        if len(rule) != 2 or not set(axes) <= known:
            raise UserError(f"config field mesh.rules: {rule!r} is not (logical axis, mesh axis or axes of "
                            f"{MESH_AXES})")


def check_precision(cfg: LlamaConfig, train: ConfigDict, warn=None) -> None:
    """float16 compute without loss scaling is refused (small gradients underflow to zero); bfloat16
    master weights with a small learning rate get a loud warning (updates below bfloat16's resolution
    round away)."""
    if cfg.dtype == "float16" and not train.loss_scale:
        raise UserError("model.dtype float16 needs train.loss_scale (e.g. 1024): without it, small gradients "
                        "underflow to zero. bfloat16 needs no loss scale.")
    if cfg.param_dtype == "bfloat16" and train.lr < LR_FLOOR_FOR_BF16_WEIGHTS:
        (warn or (lambda line: print(line, file=sys.stderr)))(
            f"WARNING: bfloat16 master weights (model.param_dtype) with train.lr {train.lr:g}: an update of "
            f"lr x weight is below bfloat16's resolution (2^-8 of the weight) and rounds away, so most weights never "
            f"change. Keep float32 master weights (model.param_dtype='float32', model.dtype='bfloat16').")


def check_best_metric(config: ConfigDict, dev_records: list) -> None:
    """`checkpoint.best_metric` must be a value the run will compute; a typo would keep no best/."""
    name = config.checkpoint.best_metric
    if not name:
        return
    if not dev_records:
        raise UserError(f"checkpoint.best_metric {name!r} needs a dev set (data.dev); set "
                        "checkpoint.best_metric='' to keep no best checkpoint")
    if name == "dev_loss":
        return
    from oie_jax.eval.gmner import metric_names as grounding_metric_names
    from oie_jax.eval.metrics import metric_names

    if config.grounding.enabled:
        names = grounding_metric_names()
    else:
        names = metric_names(dev_records[: config.eval.f1_examples or None])
    if name not in names:
        raise UserError(f"checkpoint.best_metric {name!r} is neither dev_loss nor an F1 metric of this dev set "
                        f"(names look like {', '.join(names[:3])}, ...; docs/metrics.md)")
    if not config.eval.f1_every:
        raise UserError(f"checkpoint.best_metric {name!r} is computed by generation on the dev set: set "
                        "eval.f1_every (steps between F1 evaluations)")
