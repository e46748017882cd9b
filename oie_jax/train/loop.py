"""The text training run: config -> model, data, mesh and state -> jitted steps with checkpoints, dev loss
and F1, logs and a progress bar. Re-running with the same workdir resumes from the latest checkpoint.
Another kind of run (grounding) subclasses `Run` and overrides what it builds; `train/runs.py` chooses.

    Run(config, workdir).run()      or, any kind,      oie_jax.train.runs.train(config, workdir)
"""

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np
from etils import epath
from ml_collections import ConfigDict
from tqdm import tqdm

from oie_jax import sharding
from oie_jax.data.labels import copy_label_sets, label_sets, save_label_sets
from oie_jax.data.pipeline import Pipeline, PipelineConfig, to_global
from oie_jax.data.sources.registry import write_jsonl
from oie_jax.data.tokenizer import copy_tokenizer_files
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.infer.budget import CUT, OutputLengths, copy_budget, save_budget
from oie_jax.models import attention, lora
from oie_jax.models.checkpoint import load_params, model_from_params, save_model
from oie_jax.train import build, throughput, validate
from oie_jax.train.checkpointing import Checkpoints
from oie_jax.train.metrics_log import MetricsLog
from oie_jax.train.signals import StopSignals
from oie_jax.train.step import (
    create_state,
    frozen_shardings,
    jit_on_mesh,
    make_eval_step,
    make_train_step,
    state_shardings,
)


class TrainingDiverged(UserError):
    exit_code = 3


@dataclasses.dataclass
class Outcome:
    step: int
    losses: dict  # step -> train loss
    dev_losses: dict  # step -> dev loss
    stopped_by: str | None = None  # signal name when a signal ended the run
    exported_step: int | None = None  # the step whose parameters went to WORKDIR/model


class Interval:
    """The steps since the last log line: token-weighted means of the losses, and throughput over the
    steps that were timed. A step is timed from the fetch of the previous step's metrics to the fetch of
    its own, i.e. from one completed step to the next: the device never idles between them, and the
    clock runs on from one interval to the next, whatever the host does in between (logging waits for
    nothing on the device). Not timed: a process's first step (it compiles), and the first step after
    evaluation or saving (the clock restarted while it ran, or before it started)."""

    KNOWN = ("loss", "z_loss", "grad_norm", "target_tokens", "tokens")

    def __init__(self, mark: float | None = None):
        self.steps = self.target_tokens = self.cross_entropy = self.z_loss = self.grad_norm = 0.0
        self.others: dict[str, float] = {}  # any other metric of the step (grounding's parts of the loss): step means
        self.timed_steps = self.timed_tokens = self.timed_seconds = 0
        self.mark, self.restarted = time.perf_counter() if mark is None else mark, False

    def add(self, metrics: dict, timed: bool) -> None:
        self.steps += 1
        self.target_tokens += metrics["target_tokens"]
        self.cross_entropy += metrics["loss"] * metrics["target_tokens"]
        self.z_loss += metrics["z_loss"] * metrics["target_tokens"]
        self.grad_norm += metrics["grad_norm"]
        for name in metrics.keys() - set(self.KNOWN):
            self.others[name] = self.others.get(name, 0.0) + metrics[name]
        now = time.perf_counter()
        if timed and not self.restarted:
            self.timed_steps += 1
            self.timed_tokens += metrics["tokens"]
            self.timed_seconds += now - self.mark
        self.mark, self.restarted = now, False

    def restart_clock(self) -> None:
        self.mark, self.restarted = time.perf_counter(), True

    def summary(self, tokens_to_flops: float) -> dict:
        tokens = max(self.target_tokens, 1.0)
        values = {"loss": self.cross_entropy / tokens, "z_loss": self.z_loss / tokens,
                  "grad_norm": self.grad_norm / max(self.steps, 1)}
        values.update({name: total / max(self.steps, 1) for name, total in sorted(self.others.items())})
        if self.timed_steps:
            rate = self.timed_tokens / self.timed_seconds
            values.update(tokens_per_s=rate, step_time_s=self.timed_seconds / self.timed_steps,
                          mfu=rate * tokens_to_flops)
        return values


COMPILATION_CACHE = "compilation_cache"
DEV_FILE = "dev.jsonl"


def use_compilation_cache(directory: epath.Path) -> None:
    """Compiled steps are saved to and loaded from `directory` (unless JAX_COMPILATION_CACHE_DIR names
    another): the cache is set up once per process, so it is reset when the directory changes."""
    from jax.experimental.compilation_cache import compilation_cache

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir == str(directory):
        return
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(str(directory))


class Run:
    """One training run, built from a config and a workdir (local or gs://). `run()` trains to the end,
    or until SIGTERM/SIGINT, and exports the best (else the last) parameters to WORKDIR/model."""

    def __init__(self, config: ConfigDict, workdir, on_step=None):
        validate.check_config(config)
        config = build.with_absolute_paths(config)
        self.config, self.on_step = config, on_step
        self.workdir = location(workdir)
        self.primary = jax.process_index() == 0
        self.say = print if self.primary else (lambda *args, **kwargs: None)

        # The mesh first: a shape that does not fit the devices is reported before any data is read.
        self.mesh = sharding.mesh_from_config(config.mesh.shape, config.mesh.dcn_shape)
        self.cfg, self.init = build.model_config(config.model)
        self.cfg = build.with_lora(self.cfg, config.train)
        validate.check_precision(self.cfg, config.train, warn=self.say)
        # The kernel "auto" stands for here; a kernel this platform lacks is an error now, not at step 1.
        self.attention = attention.resolve(self.cfg.attention, jax.devices()[0].platform, self.cfg.dtype)
        self.tokenizer = build.run_tokenizer(config.model, self.init, self.cfg)
        records = build.read_data(config.data, self.say)
        validate.check_best_metric(config, records.dev)
        self.dev_records, self.dev_origin = records.dev, records.dev_origin

        self.rules = build.mesh_rules(config)
        self.rows = sharding.batch_sharding(self.mesh, self.rules)
        build.rows_per_shard(config, self.mesh)
        mine = sharding.process_row_blocks(self.rows, config.data.batch_size)[jax.process_index()]
        self.pipeline, self.dev = self.make_pipelines(records, mine)
        data = config.data
        self.epoch_steps = [self.pipeline.steps_in_epoch(e) for e in range(max(config.train.epochs, 1))]
        self.total_steps = config.train.steps or sum(self.epoch_steps)  # what the schedule spans
        self.end_step = min(self.total_steps, config.train.steps_limit or self.total_steps)  # where this run stops
        self.optimizer, schedule = build.make_optimizer(config.train, self.total_steps)
        # On the host, once: evaluating the schedule in the loop would queue behind the running step.
        self.learning_rates = np.asarray(jax.vmap(schedule)(np.arange(self.total_steps)))
        self.shardings = self.make_shardings()

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.label_sets = label_sets(records.train)  # what constrained decoding allows, in dev F1 and after
        # The generation budget: set, or (0) the fewest tokens that hold 99.5% of the gold outputs.
        self.output_lengths = OutputLengths.of(records.train + records.dev, self.tokenizer, "train+dev gold outputs")
        self.max_new_tokens = config.eval.max_new_tokens or self.output_lengths.budget()
        if self.primary:  # exported with the model
            save_label_sets(self.label_sets, self.workdir)
            save_budget(self.workdir, self.max_new_tokens, self.output_lengths)
            # The dev records (a holdout exists nowhere else), so that `oie-jax eval --data` can score on them.
            write_jsonl(records.dev, self.workdir / DEV_FILE)
        if config.checkpoint.compilation_cache:
            use_compilation_cache(self.workdir / COMPILATION_CACHE)
        self.checkpoints = Checkpoints(self.workdir, config.checkpoint)
        self.run_config = {"config": config.to_dict(), "model": self.cfg.to_dict()}
        self.state, self.start = self.restore_or_init()
        self.checkpoints.resume_best(self.start, self.say)
        self.train_step, self.eval_step = self.make_steps()
        self.peak, self.peak_source = throughput.peak_flops()
        self.tokens_to_flops = (throughput.train_flops_per_token(self.cfg, data.seq_len)
                                / (self.peak * jax.device_count()))
        self.log = MetricsLog(self.workdir, self.start, enabled=self.primary)
        self.outcome = Outcome(self.start, {}, {})
        self.interval = Interval()
        self.bar = None

    # ---- what a kind of run builds (text here; grounding in `grounding/run.py`) -------------------

    def make_pipelines(self, records, mine: slice):
        """(training pipeline, dev pipeline or None); evaluation reads every dev example once, in order,
        whatever the training mixture."""
        data = self.config.data
        pipeline = Pipeline(records.train, self.tokenizer, build.pipeline_config(data), rows=mine)
        dev = None
        if records.dev:
            dev = Pipeline(records.dev, self.tokenizer,
                           PipelineConfig.for_evaluation(data.seq_len, data.batch_size, data.pack), rows=mine)
        return pipeline, dev

    def make_shardings(self):
        self.frozen_shardings = frozen_shardings(self.cfg, self.mesh, self.rules)
        return state_shardings(self.cfg, self.optimizer, self.mesh, self.rules)

    def make_steps(self):
        """(train_step(state, batch), eval_step(params, batch)), jitted on the mesh; the frozen
        parameters (a LoRA model's base) go in as arguments that are never donated."""
        train = self.config.train
        train_step = jit_on_mesh(
            make_train_step(self.cfg, self.optimizer, train.micro_batches, train.z_loss, train.loss_scale,
                            train.loss_chunk, train.seed),
            self.mesh, self.rules, in_shardings=(self.shardings, self.rows, self.frozen_shardings),
            out_shardings=(self.shardings, None), donate_argnums=0)
        eval_step = jit_on_mesh(make_eval_step(self.cfg, train.loss_chunk), self.mesh, self.rules,
                                in_shardings=(self.shardings.params, self.rows, self.frozen_shardings))
        return (lambda state, batch: train_step(state, batch, self.frozen),
                lambda params, batch: eval_step(params, batch, self.frozen))

    def abstract_state(self):
        return build.abstract_state(self.cfg, self.optimizer, self.shardings)

    def initial_state(self):
        """The state of step 0: the init directory's parameters, else a random init (a LoRA model's
        adapters are always new)."""
        params = None
        if self.init is not None and self.cfg.lora is None:
            params = load_params(self.init, self.cfg, self.shardings.params)
        return create_state(self.cfg, self.optimizer, self.shardings, params, seed=self.config.train.seed)

    def load_frozen(self) -> dict:
        """The parameters that the steps take but do not train: a LoRA model's base; {} for full
        fine-tuning."""
        return {} if self.cfg.lora is None else self.lora_base(self.frozen_shardings)

    def lora_base(self, placed) -> dict:
        """A LoRA model's base, placed, in train.lora.base_dtype: read (or drawn) in it, so a bfloat16
        base never exists in float32 on the devices. `oie-jax export` reads or draws it again."""
        cfg = self.cfg.replace(param_dtype=build.lora_base_dtype(self.cfg, self.config.train))
        return build.lora_base(cfg, self.init, self.config.train.seed, placed)

    def full_params(self, params: dict) -> tuple:
        """(plain config, parameters) of the model whose trained part is `params`: a LoRA model's
        adapters are merged into its base (for generation and export)."""
        return lora.merge(self.cfg, lora.join(self.frozen, params))

    # ---- the steps of a run ----------------------------------------------------------------------

    def restore_or_init(self):
        """(state, first step): the newest intact checkpoint, else the initial state."""
        self.frozen = self.load_frozen()
        self.abstract = self.abstract_state()
        restored = self.checkpoints.restore_latest(self.abstract, self.say)
        if restored is not None:
            state, data_state, saved = restored
            self.pipeline.restore(data_state)
            for line in config_changes(saved.get("config", {}), self.run_config["config"]):
                self.say(f"  config changed since the checkpoint: {line}")
            return state, int(state.step)
        return self.initial_state(), 0

    def run(self) -> Outcome:
        for line in self.summary_lines():
            self.say(line)
        step, pending = self.start, None
        signals = StopSignals()
        self.bar = tqdm(total=self.end_step, initial=step, unit="step", disable=not self.primary,
                        dynamic_ncols=True)
        try:
            with signals:
                if step == 0 and self.dev is not None:
                    self.evaluate(0)
                batches = iter(self.pipeline)
                while step < self.end_step and not signals.stop_requested(step):
                    self.state, metrics = self.train_step(self.state, to_global(next(batches), self.rows))
                    step += 1
                    # The metrics of the step before are fetched while this one runs (no host stall); a
                    # step is checked before it is evaluated or saved.
                    if pending is not None:
                        self.finish_step(*pending)
                    pending = (step, metrics)
                    if self.evaluation_due(step) or self.due(self.config.checkpoint.every, step):
                        self.finish_step(*pending)
                        pending = None
                        if self.evaluation_due(step):
                            self.evaluate(step)
                        if self.due(self.config.checkpoint.every, step):
                            self.save(step)
                if pending is not None:
                    self.finish_step(*pending)
                if step < self.end_step:  # stopped by a signal: keep the work done
                    self.save(step)
                    self.outcome.stopped_by = signals.name
                    self.write(f"{signals.name} received: saved step {step} in {self.checkpoints.directory}; "
                                   "run the same command again to resume")
        finally:
            self.bar.close()
            self.checkpoints.close()
            self.log.close()
        self.outcome.step = step
        if step == self.end_step and self.config.export.model:
            self.export()
        return self.outcome

    def finish_step(self, step: int, metrics: dict) -> None:
        """Host side of a step: divergence check, callback, log line."""
        metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            last = self.checkpoints.latest_step()
            raise TrainingDiverged(
                f"step {step}: loss {metrics['loss']}, gradient norm {metrics['grad_norm']}: training diverged and "
                f"stopped. The last good checkpoint is " + (f"step {last} in {self.checkpoints.directory}" if last
                                                           else "none (no checkpoint was written yet)")
                + "; lower train.lr, lengthen the warmup or clip gradients (train.clip_norm).")
        self.outcome.losses[step] = metrics["loss"]
        self.interval.add(metrics, timed=step > self.start + 1)  # a process's first step compiles
        self.bar.update(1)
        if step % self.config.log.every == 0 or step == self.end_step:
            logged = self.interval.summary(self.tokens_to_flops)
            logged["lr"] = float(self.learning_rates[step - 1])  # the rate this step's update used
            self.log.write(step, logged)
            self.bar.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{logged['lr']:.2e}",
                                 **({"tok_s": f"{logged['tokens_per_s']:,.0f}"} if "tokens_per_s" in logged else {}))
            self.interval = Interval(mark=self.interval.mark)
        if self.on_step is not None:
            self.on_step(step, metrics)

    def write(self, line: str) -> None:
        """A line above the progress bar, from process 0 only (tqdm.write prints even when disabled)."""
        if self.primary:
            self.bar.write(line)

    def due(self, every: int, step: int) -> bool:
        return bool(every) and step % every == 0 or step == self.end_step

    def evaluation_due(self, step: int) -> bool:
        return self.dev is not None and (self.due(self.config.eval.every, step)
                                         or bool(self.config.eval.f1_every) and self.due(self.config.eval.f1_every,
                                                                                         step))

    def evaluate(self, step: int) -> None:
        """Dev loss and F1 as they are due, logged, and offered to best/."""
        metrics = {}
        if self.due(self.config.eval.every, step):
            metrics["dev_loss"] = self.outcome.dev_losses[step] = self.dev_loss()
        if self.config.eval.f1_every and self.due(self.config.eval.f1_every, step):
            metrics.update(self.dev_f1(step))
        self.log.write(step, metrics)
        best = self.config.checkpoint.best_metric
        better = best in metrics and self.checkpoints.offer_best(step, self.state.params, metrics,
                                                                            self.run_config)
        shown = {name: metrics[name] for name in ("dev_loss", best) if name in metrics}
        self.write(f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in shown.items())
                       + (" (best so far, saved)" if better else ""))
        self.interval.restart_clock()

    def dev_loss(self) -> float:
        total = count = 0.0
        sums = [self.eval_step(self.state.params, to_global(batch, self.rows)) for batch in self.dev.one_epoch()]
        for loss_sum, tokens in jax.device_get(sums):  # one transfer at the end, not a sync per batch
            total, count = total + float(loss_sum), count + float(tokens)
        return total / max(count, 1.0)

    def dev_f1(self, step: int) -> dict:
        """Greedy generation on the dev records, its rows split over the mesh's batch axes (every process
        takes part), decoded as `oie-jax eval` will (`f1_decoding`), scored by the evaluation code."""
        from oie_jax.eval.evaluate import evaluate

        records = self.dev_records[: self.config.eval.f1_examples or None]
        model = model_from_params(*self.full_params(self.state.params))
        with sharding.activation_rules(self.rules):
            _, scores = evaluate(model, self.tokenizer, records, batch_size=self.config.eval.batch_size,
                                 max_new_tokens=self.max_new_tokens, progress=False,
                                 log=lambda line: self.write(f"step {step}: {line}"),
                                 labels=self.label_sets if self.config.eval.constrained else None)
        return scores.metrics()

    def evaluation_plan(self) -> str:
        evaluation = self.config.eval
        if self.dev is None:
            return "no dev set"
        f1 = "no dev F1 (eval.f1_every=0)"
        if evaluation.f1_every:
            f1 = (f"dev F1 every {evaluation.f1_every} steps on {evaluation.f1_examples or 'all'} records, decoding "
                  f"{self.f1_decoding()}")
        return f"dev loss every {evaluation.every or self.total_steps} steps; {f1}"

    def budget_line(self) -> str:
        """The generation budget and where it comes from; a warning when it cuts more than 0.5% of the gold outputs."""
        lengths = self.output_lengths
        if not self.config.eval.max_new_tokens:
            return (f"at most {self.max_new_tokens} new tokens (eval.max_new_tokens=0: the fewest that hold "
                    f"{1 - CUT:.1%} of the {lengths.describe()})")
        cut = lengths.cut_by(self.max_new_tokens, tolerated=CUT)
        return (f"at most {self.max_new_tokens} new tokens (eval.max_new_tokens); {lengths.describe()}"
                + (f"\nwarning: {cut}" if cut else ""))

    def f1_decoding(self) -> str:
        if self.config.eval.constrained:
            return "constrained to the format and the training labels, as `oie-jax eval`"
        return "free (eval.constrained=False), as `oie-jax eval --no-constrained`"

    def save(self, step: int) -> None:
        self.checkpoints.save(step, self.state, self.pipeline.state(), self.run_config)
        self.log.flush()
        self.interval.restart_clock()

    def exported_params(self) -> tuple[dict, int, str]:
        """(parameters, step, where they come from): best/ when there is one, else the final step."""
        best = self.checkpoints.best_so_far
        if best is None:
            return self.state.params, self.outcome.step, "the final step"
        origin = f"best by {self.config.checkpoint.best_metric} = {best[1]:.4f}"
        return self.checkpoints.restore_best(self.abstract.params), best[0], origin

    def export(self) -> None:
        """WORKDIR/model: the parameters of best/ when there is one, else the final ones."""
        params, step, origin = self.exported_params()
        out = self.workdir / "model"
        out.mkdir(exist_ok=True)
        save_model(out, *self.full_params(params))
        if self.primary:
            copy_tokenizer_files(build.tokenizer_source(self.config.model, self.init), out)
            copy_label_sets(self.workdir, out)
            copy_budget(self.workdir, out)
        self.outcome.exported_step = step
        self.say(f"wrote the model of step {step} ({origin}) to {out}")

    def summary_lines(self) -> list[str]:
        config, cfg = self.config, self.cfg
        gib = 1024**3
        params_bytes = sharding.bytes_per_device(self.state.params, self.shardings.params)
        opt_bytes = sharding.bytes_per_device(self.state.opt_state, self.shardings.opt_state)
        tokens = config.data.batch_size * config.data.seq_len
        devices = jax.devices()
        train = config.train
        memory = (f"memory   per device: parameters {params_bytes / gib:.2f} GiB, optimizer state "
                  f"{opt_bytes / gib:.2f} GiB")
        model = [
            f"model    LLaMA {cfg.num_params() / 1e6:,.1f}M parameters ({cfg.num_layers} layers, hidden "
            f"{cfg.hidden_size}); {cfg.param_dtype} weights, {cfg.dtype} compute, remat {cfg.remat}, "
            f"{self.attention} attention; "
            + (f"from {self.init}" if self.init else f"random init of preset {config.model.preset!r}")]
        if cfg.lora is not None:
            trained = lora.num_adapter_params(cfg)
            model.append(f"lora     rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, dropout {cfg.lora.dropout:g} on "
                         f"{', '.join(cfg.lora.targets)}: {trained:,} trained parameters "
                         f"({trained / cfg.num_params():.2%} of the model), the base frozen")
            frozen_bytes = sharding.bytes_per_device(self.frozen, self.frozen_shardings)
            memory += f", frozen base {frozen_bytes / gib:.2f} GiB ({build.lora_base_dtype(cfg, train)})"
        return [
            "",
            *model,
            f"mesh     {dict(self.mesh.shape)} on {len(devices)} {devices[0].platform} devices, {jax.process_count()} "
            f"process(es); peak {self.peak / 1e12:.3g} TFLOP/s per device ({self.peak_source})",
            f"data     train: {self.pipeline.describe()}",
            f"         dev:   {self.dev_origin}" + (f"; {self.dev.describe()}" if self.dev else ""),
            f"batch    {config.data.batch_size} rows x {config.data.seq_len} tokens = {tokens:,} tokens per step, "
            f"{train.micro_batches} micro-batch(es)",
            f"steps    {self.total_steps:,} "
            + ("(fixed)" if train.steps else
               f"({train.epochs} epoch(s) of {', '.join(map(str, self.epoch_steps))})")
            + f", {self.total_steps * tokens:,} tokens; lr {train.lr:g}, {train.decay} decay, warmup "
            f"{train.warmup_fraction:.0%}"
            + (f"; this run stops at step {self.end_step} (train.steps_limit), on the full run's schedule"
               if self.end_step < self.total_steps else ""),
            memory,
            f"eval     {self.evaluation_plan()}",
            f"generate {self.budget_line()}",
            f"saving   {f'every {config.checkpoint.every} steps' if config.checkpoint.every else 'at the end'} "
            f"(keep {config.checkpoint.keep}"
            + (f", best by {config.checkpoint.best_metric} ({config.checkpoint.best_mode})"
               if config.checkpoint.best_metric else "") + "); "
            + (f"resumed at step {self.start}" if self.start else "fresh start"),
            "",
        ]


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_changes(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines
