"""Orbax checkpoints of a run: the latest train states for resume, and the best parameters by a metric.

    WORKDIR/checkpoints/STEP/{state,data,config}   last `keep` steps: train state, data iterator state,
                                                   the run config it was trained with
    WORKDIR/best/STEP/{params,metrics,config}      the parameters with the best `best_metric` so far

Paths are `etils.epath` paths, so WORKDIR may be a bucket (gs://...). Orbax writes each step into a
temporary directory and renames it when complete, so a save cut off by a crash is never listed as a
step. On resume, a step that is incomplete (an item missing) or provably damaged (metadata that does
not parse, array data missing or corrupt inside a step directory that is there) is skipped with a
warning. Anything else stops the run with a line naming the step, on every process: a step that does not
fit the run (another architecture), and any error that says nothing of the step itself (a timeout, a
permission error, a step directory that vanished while it was read, memory), since falling back to an
older step, or to a fresh start, would throw away good work and the best/ steps after it.
"""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from oie_jax.errors import UserError
from oie_jax.train.step import TrainState

PARTIAL_MARK = ".orbax-checkpoint-tmp"
STATE_ITEMS = ("state", "data", "config")


def _as_tree(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def shapes_by_path(tree) -> dict[str, tuple]:
    """{"params/embed": shape, ...} of a tree of arrays, ShapeDtypeStructs or Orbax array metadata."""

    def name(key):
        return str(next(getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)))

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(name, path)): tuple(leaf.shape) for path, leaf in leaves}


def _manager(directory: epath.Path, items: dict, keep: int, async_save: bool, barrier: str):
    """A manager of {item: handler}: with the handlers known, a new process can read an item's
    metadata before restoring it."""
    # Orbax names its cross-process barriers after the step directory, and both managers save step N at
    # the same time: without distinct prefixes, two processes can meet at the wrong barrier.
    return ocp.CheckpointManager(directory, item_handlers=items, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=barrier)))


class Checkpoints:
    def __init__(self, workdir: epath.Path, settings: ConfigDict):
        self.directory = workdir / "checkpoints"
        self.best_metric, self.best_mode = settings.best_metric, settings.best_mode
        self.manager = _manager(self.directory, {"state": ocp.StandardCheckpointHandler(),
                                                 "data": ocp.JsonCheckpointHandler(),
                                                 "config": ocp.JsonCheckpointHandler()},
                                settings.keep, settings.async_save, "latest")
        self.best = None
        self.best_so_far: tuple[int, float] | None = None  # (step, value)
        if self.best_metric:
            self.best = _manager(workdir / "best", {"params": ocp.StandardCheckpointHandler(),
                                                    "metrics": ocp.JsonCheckpointHandler(),
                                                    "config": ocp.JsonCheckpointHandler()},
                                 1, settings.async_save, "best")

    def resume_best(self, step: int, say=print) -> None:
        """The best so far of a run that resumes at `step`. A best/ step after it comes from a run that was
        cut off: it is dropped, and the evaluations of the resumed run decide again."""
        if self.best is None:
            return
        for later in [s for s in self.best.all_steps() if s > step]:
            say(f"dropping best/{later}: saved after step {step}, where the run resumes")
            self.best.delete(later)
        if (kept := self.best.latest_step()) is not None:
            metrics = self.best.restore(kept, args=ocp.args.Composite(metrics=ocp.args.JsonRestore())).metrics
            self.best_so_far = kept, float(metrics[self.best_metric])

    def save(self, step: int, state: TrainState, data_state: dict, config: dict) -> None:
        replace_step(self.manager, step)
        self.manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_as_tree(state)), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config)))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def offer_best(self, step: int, params: dict, metrics: dict, config: dict) -> bool:
        """Saves `params` (with the run config, so that best/ exports alone) under best/ when
        `metrics[best_metric]` is at least as good as the best so far (a tie keeps the later step,
        trained longer)."""
        if self.best is None:
            return False
        value = float(metrics[self.best_metric])
        if np.isnan(value) or (self.best_so_far is not None and not self._at_least_as_good(value)):
            return False
        replace_step(self.best, step)
        self.best.save(step, force=True, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), metrics=ocp.args.JsonSave({self.best_metric: value}),
            config=ocp.args.JsonSave(config)))
        self.best_so_far = step, value
        return True

    def restore_best(self, abstract_params: dict) -> dict:
        """The parameters of best/, placed like `abstract_params`."""
        self.best.wait_until_finished()
        return restore_params(self.best.directory, self.best_so_far[0], "params", abstract_params)

    def _at_least_as_good(self, value: float) -> bool:
        best = self.best_so_far[1]
        return value <= best if self.best_mode == "min" else value >= best

    def restore_latest(self, abstract_state: TrainState, say=print) -> tuple[TrainState, dict, dict] | None:
        """(state, data state, config) of the newest intact step, placed like `abstract_state`
        (ShapeDtypeStructs with shardings); None when there is none. Process 0 picks the step and every
        process restores that one."""
        for partial in sorted(self.directory.glob(f"*{PARTIAL_MARK}*")):
            say(f"ignoring {partial.name}: a checkpoint cut off mid-save")
        target = _as_tree(abstract_state)
        steps = sorted(self.manager.all_steps(), reverse=True)
        while steps:
            step = agreed(lambda steps=steps: self._newest_intact_step(steps, target, say))
            if step is None:
                return None
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore()))
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                # Several processes cannot agree to skip a step safely; and an error that is not damage
                # (an I/O error, a bucket timeout, out of memory) would skip good steps.
                if jax.process_count() > 1 or not self.damaged(step, exc):
                    raise self.unreadable(step, " cannot be restored", reason) from None
                say(f"checkpoint step {step} is damaged: its state cannot be read ({reason[:160]}); trying the "
                    "one before")
                steps = [s for s in steps if s < step]
                continue
            say(f"resuming from step {step} ({self.directory / str(step)})")
            tree = restored.state
            return TrainState(tree["params"], tree["opt_state"], tree["step"]), restored.data, restored.config
        return None

    def _newest_intact_step(self, steps: list[int], target: dict, say) -> int | None:
        """The newest step with every item and readable metadata; a step whose arrays do not fit the
        run is an error, not a reason to fall back (every older step would not fit either)."""
        expected = shapes_by_path(target)
        for step in steps:
            if not self.step_is_there(step):
                raise UserError(f"checkpoint step {step} was listed and is gone (a bucket or mount that went away?); "
                                "fix the cause and run again", self.directory / str(step))
            missing = [item for item in STATE_ITEMS if not (self.directory / str(step) / item).is_dir()]
            if missing:
                say(f"checkpoint step {step} is incomplete (no {', '.join(missing)}); trying the one before")
                continue
            try:
                saved = shapes_by_path(self.manager.item_metadata(step)["state"].tree)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:160]}"
                if not self.damaged(step, exc):
                    raise self.unreadable(step, ": its metadata cannot be read", reason) from None
                say(f"checkpoint step {step} is damaged: its state cannot be read ({reason}); trying the one before")
                continue
            if saved != expected:
                raise UserError(f"checkpoint step {step} does not fit this run: {mismatch(saved, expected)}. The "
                                "config changed the model since it was saved; use a new workdir, or restore the "
                                "config", self.directory / str(step))
            return step
        return None

    def unreadable(self, step: int, what: str, reason: str) -> UserError:
        """The error of a step that could not be read (`what` follows "checkpoint step N")."""
        return UserError(f"checkpoint step {step}{what} ({reason}); fix the cause and run again, or delete the "
                         "step to resume from the one before", self.directory / str(step))

    def step_is_there(self, step: int) -> bool:
        try:
            return (self.directory / str(step)).is_dir()
        except Exception:  # the filesystem cannot even say: nothing is proven about the step
            return False

    def damaged(self, step: int, exc: Exception) -> bool:
        """Whether `exc`, raised while reading `step`, proves the step damaged: the error says a file of
        the step is missing or does not decode, and the step's directory is there (had it gone, or could
        it not be listed, the storage failed, not the step)."""
        return is_damage(exc) and self.step_is_there(step)

    def close(self) -> None:
        """Waits for background saves to finish."""
        self.manager.wait_until_finished()
        self.manager.close()
        if self.best is not None:
            self.best.wait_until_finished()
            self.best.close()


def replace_step(manager: ocp.CheckpointManager, step: int) -> None:
    """Makes room for a new save of `step`: a run cut off after saving it, or a damaged copy of it
    skipped on resume, left one behind."""
    if step in manager.all_steps():
        manager.wait_until_finished()
        manager.delete(step)


def mismatch(saved: dict, expected: dict) -> str:
    """The first difference between two {path: shape} tables, in words (parameters before the optimizer
    state, whose moments repeat them)."""
    for path in sorted(set(saved) | set(expected), key=lambda p: (not p.startswith("params/"), p)):
        if path not in saved:
            return f"it has no {path}"
        if path not in expected:
            return f"it has {path}, which the run does not"
        if saved[path] != expected[path]:
            return f"{path} has shape {saved[path]}, the run needs {expected[path]}"
    return "no difference"


# How tensorstore and Orbax report array data that is missing or does not decode; anything else (an I/O
# error, a timeout, a permission, memory) is not damage of the step.
DAMAGE_MARKS = ("NOT_FOUND", "DATA_LOSS", "checksum", "corrupt")
MESSAGE_BYTES = 1024


def is_damage(exc: Exception) -> bool:
    """A missing file, metadata that is not JSON, or array data tensorstore finds missing or corrupt."""
    if isinstance(exc, (FileNotFoundError, json.JSONDecodeError)):
        return True
    return not isinstance(exc, OSError) and any(mark in str(exc) for mark in DAMAGE_MARKS)


def agreed(pick) -> int | None:
    """Process 0's `pick()` (a step or None), on every process. When it raises, every process raises a
    UserError with its message, instead of the others waiting in the broadcast until the coordinator
    times out."""
    if jax.process_count() == 1:
        return pick()
    from jax.experimental import multihost_utils

    step, error, text = None, None, b""
    if jax.process_index() == 0:
        try:
            step = pick()
        except Exception as exc:
            error = exc
            text = (str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}").encode()
    message = np.frombuffer(text[:MESSAGE_BYTES].ljust(MESSAGE_BYTES, b"\0"), np.uint8)
    chosen, message = multihost_utils.broadcast_one_to_all((np.int32(-1 if step is None else step), message))
    if error is not None:
        raise error
    if np.any(message):
        raise UserError("on process 0: " + bytes(np.asarray(message)).rstrip(b"\0").decode(errors="replace"))
    return None if int(chosen) < 0 else int(chosen)


def read_run_config(directory: epath.Path, step: int) -> dict:
    """The run config saved with `step` of checkpoints/ or best/; for a best/ step saved before best/
    carried it, the one of the run's latest checkpoint."""
    manager = ocp.CheckpointManager(directory, item_names=("config",))
    if not (directory / str(step) / "config").is_dir():
        manager = ocp.CheckpointManager(directory.parent / "checkpoints", item_names=("config",))
        latest = manager.latest_step()
        if latest is None:
            raise UserError(f"step {step} holds no run config, and the run has no checkpoints/ to take it from",
                            directory)
        step = latest
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def restore_params(directory: epath.Path, step: int, item: str, abstract_params: dict) -> dict:
    """The parameters of one step of a checkpoint directory, placed like `abstract_params`
    (ShapeDtypeStructs): on their shardings, or as numpy arrays in host memory where they have none
    (an export of a model larger than one device reads it that way). `item` is `state` (a train
    state: its params are read alone) or `params` (best/)."""
    manager = ocp.CheckpointManager(directory, item_names=(item,))
    if step not in manager.all_steps():
        raise UserError(f"no step {step} (steps: {sorted(manager.all_steps())})", directory)
    restore_args = jax.tree.map(
        lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype) if a.sharding is None
        else ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype), abstract_params)
    if item == "state":
        args = ocp.args.PyTreeRestore(item={"params": abstract_params}, restore_args={"params": restore_args},
                                      partial_restore=True)
        return manager.restore(step, args=ocp.args.Composite(state=args)).state["params"]
    args = ocp.args.PyTreeRestore(item=abstract_params, restore_args=restore_args)
    return manager.restore(step, args=ocp.args.Composite(params=args)).params
