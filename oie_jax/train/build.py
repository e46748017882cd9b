"""What a training config builds: the architecture, tokenizer, records, pipelines, optimizer, mesh
checks and abstract state. The run (`loop.py`), the dry run (`plan.py`) and `export.py` start here."""

import copy
import dataclasses
from typing import Any

import jax
from etils import epath
from ml_collections import ConfigDict

from oie_jax import sharding
from oie_jax.data import holdout
from oie_jax.data.format import Record
from oie_jax.data.pipeline import PipelineConfig
from oie_jax.data.tokenizer import Tokenizer, load_tokenizer
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.models import encoders
from oie_jax.models.checkpoint import CONFIG_FILE, load_config, load_params
from oie_jax.models.config import LlamaConfig, LoraConfig, preset
from oie_jax.train.optimizer import adamw, learning_rate_schedule
from oie_jax.train.step import TrainState, frozen, init_params, init_state, trainable


def with_absolute_paths(config: ConfigDict) -> ConfigDict:
    """A copy of `config` whose local model paths (`model.init`, `model.tokenizer`) are absolute, so
    that the run config saved with every checkpoint means the same from any working directory."""
    config = copy.deepcopy(config)
    for name in ("init", "tokenizer"):
        if config.model[name] and config.model[name] != "bytes":
            config.model[name] = str(location(config.model[name]))
    if config.vision.init:
        config.vision.init = str(location(config.vision.init))
    return config


def model_config(model: ConfigDict, planning: bool = False) -> tuple[LlamaConfig, epath.Path | None]:
    """(architecture and dtypes, directory to initialise from or None for a random init). When
    planning (--dry-run), a missing `init` directory falls back to `preset`."""
    init = location(model.init) if model.init else None
    if init is not None and not (init / CONFIG_FILE).is_file() and planning and model.preset:
        init = None
    if init is not None:
        cfg = load_config(init)
    elif model.preset:
        cfg = preset(model.preset)
    else:
        raise UserError("the config sets neither model.init (a model directory to fine-tune) nor model.preset")
    overrides = {name: model[name] for name in ("param_dtype", "dtype", "remat", "attention") if model[name]}
    return cfg.replace(**overrides), init


def with_lora(cfg: LlamaConfig, train: ConfigDict) -> LlamaConfig:
    """The model a run trains: `cfg` with the adapters of `train.lora` when its rank is set."""
    spec = train.lora
    if not spec.rank:
        return cfg
    return cfg.replace(lora=LoraConfig(spec.rank, float(spec.alpha), tuple(spec.targets), float(spec.dropout)))


def lora_base_dtype(cfg: LlamaConfig, train: ConfigDict) -> str:
    """The dtype a LoRA run keeps its frozen base in."""
    return train.lora.base_dtype or cfg.param_dtype


def lora_base(cfg: LlamaConfig, init, seed: int, shardings=None) -> dict:
    """A LoRA model's frozen base in cfg.param_dtype: the `init` directory's parameters (Orbax reads them
    in that dtype), else the random init drawn from `seed`; placed by `shardings`, or host arrays."""
    if init:
        return load_params(init, cfg.replace(lora=None), shardings)
    drawn = jax.jit(lambda: frozen(cfg, init_params(cfg, seed)), out_shardings=shardings)()
    return drawn if shardings is not None else jax.device_get(drawn)


def vision_config(vision: ConfigDict, planning: bool = False) -> tuple[Any, epath.Path | None]:
    """(encoder config with the config's dtypes, directory to initialise from) of the `vision` section;
    (None, None) when the run has no image encoder. Planning falls back to `preset` like `model_config`."""
    init = location(vision.init) if vision.init else None
    if init is not None and not (init / encoders.CONFIG_FILE).is_file() and planning and vision.preset:
        init = None
    if init is not None:
        cfg = encoders.load_vision_config(init)[0]
    elif vision.preset:
        cfg = encoders.preset(vision.preset)
    else:
        return None, None
    overrides = {name: vision[name] for name in ("param_dtype", "dtype", "remat") if vision[name]}
    return cfg.replace(**overrides), init


def tokenizer_source(model: ConfigDict, init) -> str:
    source = model.tokenizer or init
    if not source:
        raise UserError("a random init needs model.tokenizer (a tokenizer path, or 'bytes')")
    return str(source)


def run_tokenizer(model: ConfigDict, init, cfg: LlamaConfig) -> Tokenizer:
    tokenizer = load_tokenizer(tokenizer_source(model, init))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary only "
                        f"{cfg.vocab_size}")
    return tokenizer


def read_records(spec: str, data: ConfigDict, say=print) -> list[Record]:
    """Records of "sample:SPLIT" or of comma-separated files, directories and globs."""
    if spec.startswith("sample:"):
        from oie_jax.data.sample import SPLITS, load_sample

        split = spec.removeprefix("sample:")
        if split not in SPLITS:
            raise UserError(f"data spec {spec!r}: the sample corpus has splits {SPLITS}")
        return load_sample(split)
    from oie_jax.data.sources.registry import load_source

    _, result = load_source([p.strip() for p in spec.split(",") if p.strip()], data.source, strict=data.strict)
    for line in result.summary_lines():
        say(f"  {line}")
    if result.problems:
        say(f"  {len(result.problems):,} records rejected (see `oie-jax data inspect {spec}` for each one)")
    if result.warnings:
        say(f"  {len(result.warnings):,} records kept with a warning (`oie-jax data inspect` lists them)")
    return result.records


@dataclasses.dataclass(frozen=True)
class Records:
    train: list[Record]
    dev: list[Record]
    dev_origin: str  # where the dev records come from, for the run summary


def read_data(data: ConfigDict, say=print) -> Records:
    """The training and dev records of a config; `data.dev = "holdout:N"` carves the dev set out of
    the training records (the MMM release has no dev split)."""
    say(f"reading training data: {data.train}")
    train = read_records(data.train, data, say)
    per_group = holdout.parse_spec(data.dev)
    if per_group is not None:
        train, dev, counts = holdout.split(train, per_group, data.seed)
        origin = (f"{len(dev):,} records held out of the training data (up to {per_group} per subset x language "
                  f"of {len(counts)} groups, seed {data.seed})")
    elif data.dev:
        say(f"reading dev data: {data.dev}")
        dev, origin = read_records(data.dev, data, say), data.dev
    else:
        dev, origin = [], "none"
    return Records(train, dev, origin)


def pipeline_config(data: ConfigDict) -> PipelineConfig:
    return PipelineConfig(seq_len=data.seq_len, batch_size=data.batch_size, pack=data.pack, seed=data.seed,
                          mixture_temperature=data.mixture_temperature)


def make_optimizer(train: ConfigDict, total_steps: int):
    warmup = int(round(train.warmup_fraction * total_steps))
    schedule = learning_rate_schedule(train.lr, total_steps, warmup, train.decay, train.end_fraction)
    return adamw(schedule, train.weight_decay, train.clip_norm or None, train.b1, train.b2), schedule


def abstract_state(cfg: LlamaConfig, optimizer, shardings: TrainState) -> TrainState:
    """The train state as ShapeDtypeStructs placed by `shardings`: what a restore fills."""
    abstract = jax.eval_shape(lambda: init_state(trainable(cfg, init_params(cfg, 0)), optimizer))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def mesh_rules(config: ConfigDict) -> tuple:
    return tuple(tuple(rule) for rule in config.mesh.rules)


def rows_per_shard(config: ConfigDict, mesh) -> int:
    """Rows of one micro-batch on one batch shard of the mesh; an error when the batch does not split."""
    shards = sharding.axis_size(mesh, sharding.logical_to_spec(("batch",), mesh_rules(config))[0])
    micro = config.train.micro_batches
    if config.data.batch_size % micro or (config.data.batch_size // micro) % shards:
        raise UserError(f"data.batch_size {config.data.batch_size} in {micro} micro-batch(es) (train.micro_batches) "
                        f"does not divide over {shards} batch shards of the mesh")
    return config.data.batch_size // micro // shards
