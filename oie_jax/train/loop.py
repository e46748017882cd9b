"""The training run: config -> model, data, mesh and state -> jitted steps with checkpoints, dev loss,
logs and a progress bar. Re-running with the same workdir resumes from the latest checkpoint."""

import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import jax
from ml_collections import ConfigDict
from tqdm import tqdm

from oie_jax import sharding
from oie_jax.data.format import Record
from oie_jax.data.pipeline import Pipeline, PipelineConfig, to_global
from oie_jax.data.tokenizer import Tokenizer, load_tokenizer
from oie_jax.errors import UserError
from oie_jax.models.checkpoint import CONFIG_FILE, load_config, load_params, model_from_params, save_model
from oie_jax.models.config import LlamaConfig, preset
from oie_jax.train import throughput
from oie_jax.train.checkpointing import Checkpoints, with_shardings
from oie_jax.train.metrics_log import MetricsLog
from oie_jax.train.optimizer import adamw, learning_rate_schedule
from oie_jax.train.step import (
    TrainState,
    create_state,
    init_params,
    init_state,
    jit_on_mesh,
    make_eval_step,
    make_train_step,
    state_shardings,
)


class TrainingDiverged(UserError):
    exit_code = 3


# ---- what a config builds ------------------------------------------------------------------------

def model_config(model: ConfigDict, planning: bool = False) -> tuple[LlamaConfig, Path | None]:
    """(architecture and dtypes, directory to initialise from or None for a random init). When
    planning (--dry-run), a missing `init` directory falls back to `preset`."""
    init = Path(model.init) if model.init else None
    if init is not None and not (init / CONFIG_FILE).is_file() and planning and model.preset:
        init = None
    if init is not None:
        cfg = load_config(init)
    elif model.preset:
        cfg = preset(model.preset)
    else:
        raise UserError("the config sets neither model.init (a model directory to fine-tune) nor model.preset")
    overrides = {name: model[name] for name in ("param_dtype", "dtype", "remat") if model[name]}
    return cfg.replace(**overrides), init


def run_tokenizer(model: ConfigDict, init: Path | None, cfg: LlamaConfig) -> Tokenizer:
    source = model.tokenizer or init
    if not source:
        raise UserError("a random init needs model.tokenizer (a tokenizer path, or 'bytes')")
    tokenizer = load_tokenizer(source)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary only "
                        f"{cfg.vocab_size}")
    return tokenizer


def load_records(spec: str, data: ConfigDict, say=print) -> list[Record]:
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
    return result.records


def pipeline_config(data: ConfigDict, shuffle: bool = True) -> PipelineConfig:
    return PipelineConfig(seq_len=data.seq_len, batch_size=data.batch_size, pack=data.pack, seed=data.seed,
                          mixture_temperature=data.mixture_temperature, shuffle=shuffle)


def make_optimizer(train: ConfigDict, total_steps: int):
    warmup = int(round(train.warmup_fraction * total_steps))
    schedule = learning_rate_schedule(train.lr, total_steps, warmup, train.decay, train.end_fraction)
    return adamw(schedule, train.weight_decay, train.clip_norm or None, train.b1, train.b2), schedule


def abstract_state(cfg: LlamaConfig, optimizer, shardings: TrainState) -> TrainState:
    return with_shardings(jax.eval_shape(lambda: init_state(init_params(cfg, 0), optimizer)), shardings)


# ---- signals -------------------------------------------------------------------------------------

class StopSignals:
    """SIGTERM (preemption) and SIGINT ask the loop to save and stop after the current step; a second
    SIGINT interrupts at once. With several processes, JAX's preemption service catches the signal and
    `stop_requested` asks it, so that every process stops at the same step."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if jax.process_count() == 1:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_requested(signals: StopSignals, step: int) -> bool:
    if signals.received is not None:
        return True
    if jax.process_count() > 1:  # every process must stop at the same step
        from jax.experimental import multihost_utils

        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # no preemption service in this cluster setup
            return False
    return False


# ---- the run -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    step: int
    losses: dict  # step -> train loss
    dev_losses: dict  # step -> dev loss
    stopped_by: str | None = None  # signal name when a signal ended the run


def train(config: ConfigDict, workdir, on_step=None) -> Outcome:
    """Trains as `config` says, in `workdir`. `on_step(step, metrics)` is called with each step's host
    metrics (for notebooks and tests)."""
    workdir = Path(workdir).absolute()
    primary = jax.process_index() == 0
    say = print if primary else (lambda *args, **kwargs: None)

    cfg, init = model_config(config.model)
    tokenizer = run_tokenizer(config.model, init, cfg)
    say(f"reading training data: {config.data.train}")
    pipeline = Pipeline(load_records(config.data.train, config.data, say), tokenizer, pipeline_config(config.data))
    dev, dev_records = None, []
    if config.data.dev:
        dev_records = load_records(config.data.dev, config.data, say)
        dev = Pipeline(dev_records, tokenizer, pipeline_config(config.data, shuffle=False))
    epoch_steps = [pipeline.steps_in_epoch(e) for e in range(max(config.train.epochs, 1))]
    total_steps = config.train.steps or sum(epoch_steps)
    if total_steps < 1:
        raise UserError("the run has no step (train.steps and train.epochs are 0, or the data is empty)")
    optimizer, schedule = make_optimizer(config.train, total_steps)

    mesh = sharding.mesh_from_config(config.mesh.shape, config.mesh.dcn_shape)
    rules = mesh_rules(config)
    shardings = state_shardings(cfg, optimizer, mesh, rules)
    rows = sharding.batch_sharding(mesh, rules)
    rows_per_shard(config, mesh)

    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(workdir, config.checkpoint)
    run_config = {"config": config.to_dict(), "model": cfg.to_dict()}
    restored = checkpoints.restore_latest(abstract_state(cfg, optimizer, shardings), say)
    if restored is not None:
        state, data_state, saved = restored
        pipeline.restore(data_state)
        for line in config_changes(saved.get("config", {}), run_config["config"]):
            say(f"  config changed since the checkpoint: {line}")
    else:
        params = load_params(init, cfg, shardings.params) if init is not None else None
        state = create_state(cfg, optimizer, shardings, params, seed=config.train.seed)
    start = int(state.step)

    train_step = jit_on_mesh(make_train_step(cfg, optimizer, config.train.micro_batches, config.train.z_loss),
                             mesh, rules, in_shardings=(shardings, rows), out_shardings=(shardings, None),
                             donate_argnums=0)
    eval_step = jit_on_mesh(make_eval_step(cfg), mesh, rules, in_shardings=(shardings.params, rows))
    tokens_per_step = config.data.batch_size * config.data.seq_len
    flops_per_token = throughput.train_flops_per_token(cfg, config.data.seq_len)
    peak, peak_source = throughput.peak_flops()
    log = MetricsLog(workdir, start, enabled=primary)
    for line in summary_lines(config, cfg, init, mesh, pipeline, dev, total_steps, epoch_steps, shardings, state,
                              start, peak, peak_source):
        say(line)

    outcome = Outcome(start, {}, {})
    interval = {"start": time.perf_counter(), "steps": 0}

    def finish_step(step, metrics):
        """Host side of a step: divergence check, callback, log line. Fetching the metrics waits for the
        step; tf.data has the next batch ready meanwhile."""
        metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            last = checkpoints.latest_step()
            raise TrainingDiverged(
                f"step {step}: loss {metrics['loss']}, gradient norm {metrics['grad_norm']}: training diverged and "
                f"stopped. The last good checkpoint is " + (f"step {last} in {checkpoints.directory}" if last else
                                                           "none (no checkpoint was written yet)")
                + "; lower train.lr, lengthen the warmup or clip gradients (train.clip_norm).")
        outcome.losses[step] = metrics["loss"]
        if step == start + 1:  # the first step of a process compiles: no throughput from it
            interval.update(start=time.perf_counter(), steps=0)
        else:
            interval["steps"] += 1
        if step % config.log.every == 0 or step == total_steps:
            metrics["lr"] = float(schedule(step - 1))  # the rate this step's update used
            if interval["steps"]:
                elapsed = time.perf_counter() - interval["start"]
                rate = interval["steps"] * tokens_per_step / elapsed
                metrics.update(tokens_per_s=rate, step_time_s=elapsed / interval["steps"],
                               mfu=rate * flops_per_token / (peak * jax.device_count()))
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", tok_s=f"{rate:,.0f}")
            log.write(step, metrics)
            interval.update(start=time.perf_counter(), steps=0)
        if on_step is not None:
            on_step(step, metrics)

    def due(every, step) -> bool:
        return bool(every) and step % every == 0 or step == total_steps

    def evaluate(step):
        metrics = {}
        if dev is not None and due(config.eval.every, step):
            total = count = 0.0
            for batch in dev.one_epoch():
                loss_sum, tokens = eval_step(state.params, to_global(batch, rows))
                total, count = total + float(loss_sum), count + float(tokens)
            metrics["dev_loss"] = total / max(count, 1.0)
            outcome.dev_losses[step] = metrics["dev_loss"]
        if dev is not None and config.eval.f1_every and due(config.eval.f1_every, step):
            metrics.update(dev_f1(step))
        if not metrics:
            return
        log.write(step, metrics)
        better = checkpoints.offer_best(step, state.params, metrics)
        shown = {name: metrics[name] for name in ("dev_loss", config.checkpoint.best_metric) if name in metrics}
        bar.write(f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in shown.items())
                  + (" (best so far, saved)" if better else ""))
        interval["start"] = time.perf_counter()  # evaluation time is not training throughput

    def dev_f1(step) -> dict:
        if jax.process_count() > 1:
            bar.write("dev F1 skipped: generation-based evaluation runs in one process (`oie-jax eval`)")
            return {}
        from oie_jax.eval.evaluate import evaluate as generate_and_score

        records = dev_records[: config.eval.f1_examples or None]
        _, scores = generate_and_score(model_from_params(cfg, state.params), tokenizer, records,
                                       batch_size=config.eval.batch_size, max_new_tokens=config.eval.max_new_tokens,
                                       progress=False, log=lambda line: bar.write(f"step {step}: {line}"))
        return scores.metrics()

    def save(step):
        checkpoints.save(step, state, pipeline.state(), run_config)

    step = start
    signals = StopSignals()
    bar = tqdm(total=total_steps, initial=start, unit="step", disable=not primary, dynamic_ncols=True)
    try:
        with signals:
            if start == 0 and dev is not None:
                evaluate(0)
            batches = iter(pipeline)
            while step < total_steps and not stop_requested(signals, step):
                state, metrics = train_step(state, to_global(next(batches), rows))
                step += 1
                bar.update(1)
                finish_step(step, metrics)  # checked before it is evaluated or saved
                if due(config.eval.every, step) or (config.eval.f1_every and due(config.eval.f1_every, step)):
                    evaluate(step)
                if due(config.checkpoint.every, step):
                    save(step)
                    interval["start"] = time.perf_counter()
            if step < total_steps:  # stopped by a signal: keep the work done
                save(step)
                outcome.stopped_by = signal.Signals(signals.received or signal.SIGTERM).name
                bar.write(f"{outcome.stopped_by} received: saved step {step} in {checkpoints.directory}; "
                          "run the same command again to resume")
    finally:
        bar.close()
        checkpoints.close()
        log.close()
    outcome.step = step
    if step == total_steps and config.export.model:
        (workdir / "model").mkdir(exist_ok=True)
        out = save_model(workdir / "model", cfg, state.params, tokenizer_dir=init)
        say(f"wrote the fine-tuned model to {out}")
    return outcome


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


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_changes(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def summary_lines(config, cfg, init, mesh, pipeline, dev, total_steps, epoch_steps, shardings, state, start, peak,
                  peak_source) -> list[str]:
    from oie_jax.sharding import bytes_per_device

    gib = 1024**3
    params_bytes = bytes_per_device(state.params, shardings.params)
    opt_bytes = bytes_per_device(state.opt_state, shardings.opt_state)
    tokens = config.data.batch_size * config.data.seq_len
    devices = jax.devices()
    return [
        "",
        f"model    LLaMA {cfg.num_params() / 1e6:,.1f}M parameters ({cfg.num_layers} layers, hidden "
        f"{cfg.hidden_size}); "
        f"{cfg.param_dtype} weights, {cfg.dtype} compute, remat {cfg.remat}; "
        + (f"from {init}" if init else f"random init of preset {config.model.preset!r}"),
        f"mesh     {dict(mesh.shape)} on {len(devices)} {devices[0].platform} devices, {jax.process_count()} "
        f"process(es); peak {peak / 1e12:.3g} TFLOP/s per device ({peak_source})",
        f"data     train: {pipeline.describe()}",
        f"         dev:   {dev.describe() if dev else 'none'}",
        f"batch    {config.data.batch_size} rows x {config.data.seq_len} tokens = {tokens:,} tokens per step, "
        f"{config.train.micro_batches} micro-batch(es)",
        f"steps    {total_steps:,} " + ("(fixed)" if config.train.steps else
                                        f"({config.train.epochs} epoch(s) of {', '.join(map(str, epoch_steps))})")
        + f", {total_steps * tokens:,} tokens; lr {config.train.lr:g}, {config.train.decay} decay, warmup "
        f"{config.train.warmup_fraction:.0%}",
        f"memory   per device: parameters {params_bytes / gib:.2f} GiB, optimizer state {opt_bytes / gib:.2f} GiB",
        f"saving   every {config.checkpoint.every} steps (keep {config.checkpoint.keep}"
        + (f", best by {config.checkpoint.best_metric} ({config.checkpoint.best_mode})" if config.checkpoint.best_metric
           else "") + "); " + (f"resumed at step {start}" if start else "fresh start"),
        "",
    ]
