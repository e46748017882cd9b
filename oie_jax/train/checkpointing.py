"""Orbax checkpoints of a run: the latest train states for resume, and the best parameters by a metric.

    WORKDIR/checkpoints/STEP/{state,data,config}   last `keep` steps: train state, data iterator state,
                                                   the run config it was trained with
    WORKDIR/best/STEP/params                       the parameters with the best `best_metric` so far

Orbax writes each step into a temporary directory and renames it when complete, so a save cut off by
a crash is never listed as a step; `restore_latest` also steps back past a step it cannot read.
"""

import math
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from oie_jax.train.step import TrainState

PARTIAL_MARK = ".orbax-checkpoint-tmp"


def _as_tree(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


class Checkpoints:
    def __init__(self, workdir, settings: ConfigDict):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.best_metric, self.best_mode = settings.best_metric, settings.best_mode
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"checkpoint.best_mode must be min or max, not {self.best_mode!r}")
        # Orbax names its cross-process barriers after the step directory, and both managers save step
        # N at the same time: without distinct prefixes, two processes can meet at the wrong barrier.
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data", "config"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=settings.keep, create=True, enable_async_checkpointing=settings.async_save,
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="latest")))
        self.best = None
        if self.best_metric:
            self.best = ocp.CheckpointManager(
                Path(workdir).absolute() / "best", item_names=("params",),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, enable_async_checkpointing=settings.async_save,
                    best_fn=lambda metrics: metrics[self.best_metric], best_mode=self.best_mode,
                    multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="best")))

    def save(self, step: int, state: TrainState, data_state: dict, config: dict) -> None:
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_as_tree(state)), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config)))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_value(self) -> float | None:
        if self.best is None or self.best.best_step() is None:
            return None
        return self.best.metrics(self.best.best_step())[self.best_metric]  # type: ignore[index]

    def offer_best(self, step: int, params: dict, metrics: dict) -> bool:
        """Saves `params` under best/ when `metrics[best_metric]` beats the best so far."""
        if self.best is None or self.best_metric not in metrics:
            return False
        value, best = float(metrics[self.best_metric]), self.best_value()
        if math.isnan(value) or (best is not None and (value >= best if self.best_mode == "min" else value <= best)):
            return False
        self.best.save(step, force=True, metrics={self.best_metric: value},
                       args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
        return True

    def restore_latest(self, abstract_state: TrainState, say=print) -> tuple[TrainState, dict, dict] | None:
        """(state, data state, config) of the newest complete step, placed like `abstract_state`
        (ShapeDtypeStructs with shardings); None when there is none."""
        for partial in sorted(self.directory.glob(f"*{PARTIAL_MARK}*")):
            say(f"ignoring {partial.name}: a checkpoint cut off mid-save")
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_as_tree(abstract_state)), data=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore()))
            except Exception as exc:  # a damaged step: say so and fall back to the one before
                say(f"checkpoint step {step} cannot be restored ({type(exc).__name__}: {str(exc)[:200]}); "
                    "trying the one before")
                continue
            say(f"resuming from step {step} ({self.directory / str(step)})")
            tree = restored.state
            return TrainState(tree["params"], tree["opt_state"], tree["step"]), restored.data, restored.config
        return None

    def close(self) -> None:
        """Waits for background saves to finish."""
        self.manager.wait_until_finished()
        self.manager.close()
        if self.best is not None:
            self.best.wait_until_finished()
            self.best.close()


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs carrying the shardings to restore onto."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
