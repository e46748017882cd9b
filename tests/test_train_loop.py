"""The training run end to end on the tiny config: exact resume after SIGKILL and SIGTERM, partial and
damaged checkpoints, divergence, several JAX processes, config overrides and the compilation cache."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from oie_jax import sharding
from oie_jax.data import holdout
from oie_jax.data.format import Record
from oie_jax.data.packing import EncodeStats, encode
from oie_jax.data.sample import load_sample
from oie_jax.data.sources.registry import write_jsonl
from oie_jax.data.tokenizer import ByteTokenizer
from oie_jax.errors import UserError
from oie_jax.models.config import preset
from oie_jax.train import build
from oie_jax.train.checkpointing import Checkpoints
from oie_jax.train.config_file import apply_overrides, load_config_file, split_overrides
from oie_jax.train.loop import DEV_FILE, Run, TrainingDiverged
from oie_jax.train.metrics_log import read_metrics
from oie_jax.train.runs import train
from oie_jax.train.step import state_shardings
from tests.helpers import xla_flags

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_debug.py"

# Trains the tiny config and sends itself a signal after a given step: a real SIGKILL (no chance to
# save) or SIGTERM (preemption), at a known point of the run. The signal waits for the background save of
# step 5 to be complete, so that the run is cut off with a known latest checkpoint.
SIGNAL_AFTER_STEP = textwrap.dedent("""
    import os, signal, sys, time
    from oie_jax.train.config_file import load_config_file
    from oie_jax.train.runs import train
    workdir, step, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    def on_step(done, metrics):
        if done == step:
            deadline = time.time() + 60
            while not os.path.isdir(os.path.join(workdir, "checkpoints", "5")) and time.time() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), getattr(signal, name))
    outcome = train(load_config_file(sys.argv[4]), workdir, on_step=on_step)
    print("STOPPED_BY", outcome.stopped_by, outcome.step)
""")


def tiny(**overrides):
    return apply_overrides(load_config_file(TINY), [(k, repr(v)) for k, v in overrides.items()])


def losses(workdir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def run(args, env=None, cwd=ROOT, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=env or os.environ, **kwargs)


def cli(*args, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    return run(["-m", "oie_jax.cli", "train", *map(str, args)], env=env, cwd=cwd)


def two_processes(workdir, *args: str, command=("-m", "oie_jax.cli"), offset: int = 0,
                  config=TINY) -> tuple[list, list]:
    """`COMMAND train` of `config` (the tiny one) on `workdir` in two CPU processes of two devices each (fsdp
    over the four, two per process), run to their end: (exit statuses, stderrs)."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")
    port = 21000 + (os.getpid() + offset) % 9000
    procs = [subprocess.Popen(
        [sys.executable, *command, "train", "--config", str(config), "--workdir", str(workdir), *args,
         "--config.mesh.shape=(1, 2, 1)", "--config.mesh.dcn_shape=(1, 2, 1)",
         "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    return [p.returncode for p in procs], errors


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    outcome = train(tiny(), workdir)
    assert outcome.step == 12 and outcome.stopped_by is None
    return workdir


def test_uninterrupted_run_learns_and_keeps_checkpoints(uninterrupted):
    recorded = losses(uninterrupted)
    assert sorted(recorded) == list(range(1, 13))
    assert recorded[12] < recorded[1]
    dev = [m["dev_loss"] for m in read_metrics(uninterrupted) if "dev_loss" in m]
    assert len(dev) == 4 and dev[-1] < dev[0]  # steps 0, 5, 10, 12
    assert sorted(int(p.name) for p in (uninterrupted / "checkpoints").iterdir()) == [10, 12]  # keep 2
    assert [p.name for p in (uninterrupted / "best").iterdir()] == ["12"]  # dev loss fell every time
    assert list((uninterrupted / "tensorboard").glob("events.out.tfevents.*"))


def test_sigkill_then_rerun_equals_uninterrupted_and_loads_its_compiled_steps(uninterrupted, tmp_path):
    # Log compilations and cache every executable, however fast it compiled: the restarted job loads the
    # train step that the killed one compiled from the workdir's cache (not from the suite's, conftest.py).
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_LOG_COMPILES="1", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    hit = "Persistent compilation cache hit for 'jit_train_step'"
    killed = run(["-c", SIGNAL_AFTER_STEP, tmp_path / "run", "7", "SIGKILL", TINY], env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert hit not in killed.stderr and any((tmp_path / "run" / "compilation_cache").iterdir())
    assert max(losses(tmp_path / "run")) == 7
    # A relative workdir, as `make train` passes (Orbax takes absolute paths only).
    resumed = cli("--config", TINY, "--workdir", "run", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 5" in resumed.stdout and hit in resumed.stderr, resumed.stderr[-3000:]
    assert losses(tmp_path / "run") == losses(uninterrupted)  # bitwise: same batches, same state, float32 on CPU


def test_sigterm_saves_the_current_step_and_resumes_from_it(uninterrupted, tmp_path):
    stopped = run(["-c", SIGNAL_AFTER_STEP, tmp_path, "7", "SIGTERM", TINY])
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    # Step 7's metrics are handled while step 8 runs (no host stall), so the signal lands in step 7 or 8.
    step = int(re.search(r"STOPPED_BY SIGTERM (\d+)", stopped.stdout).group(1))
    assert step in (7, 8) and f"SIGTERM received: saved step {step}" in stopped.stdout
    assert step in ocp.CheckpointManager(tmp_path / "checkpoints").all_steps()
    resumed = train(tiny(), tmp_path)  # in this process: the stopped one is the one that had to be real
    assert min(resumed.losses) == step + 1
    assert losses(tmp_path) == losses(uninterrupted)


def test_a_limited_run_is_the_start_of_the_full_run_and_resumes_into_it(uninterrupted, tmp_path, capsys):
    limited = train(tiny(**{"train.steps_limit": 5}), tmp_path)
    assert limited.step == 5 and limited.stopped_by is None
    assert "this run stops at step 5 (train.steps_limit), on the full run's schedule" in capsys.readouterr().out
    def by_step(workdir) -> dict:
        steps = {}
        for m in read_metrics(workdir):
            steps.setdefault(m["step"], {}).update({k: m[k] for k in ("lr", "loss", "dev_loss") if k in m})
        return steps

    full, short = by_step(uninterrupted), by_step(tmp_path)
    assert sorted(short) == list(range(6))
    assert short == {step: full[step] for step in short}  # the full run's rates, losses and dev losses
    assert max(losses(tmp_path)) == 5 and 5 in ocp.CheckpointManager(tmp_path / "checkpoints").all_steps()
    train(tiny(), tmp_path)  # the same command without the limit goes on to the end
    assert losses(tmp_path) == losses(uninterrupted)


def test_cut_off_and_damaged_checkpoints_are_skipped_and_other_errors_stop(uninterrupted, tmp_path, capsys):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    checkpoints = tmp_path / "checkpoints"
    # What a save killed halfway leaves: Orbax's temporary directory, never renamed to its step.
    shutil.copytree(checkpoints / "12", checkpoints / "14.orbax-checkpoint-tmp-1795")
    # And a step whose array data was lost afterwards (a damaged disk, a partial copy); its metadata is intact.
    for data in (checkpoints / "12" / "state").rglob("*"):
        if data.is_file() and data.parent.name == "d":
            data.unlink()
    outcome = train(tiny(**{"train.steps": 14}), tmp_path)
    out = capsys.readouterr().out
    assert "ignoring 14.orbax-checkpoint-tmp-1795: a checkpoint cut off mid-save" in out
    assert "checkpoint step 12 is damaged: its state cannot be read (ValueError: NOT_FOUND" in out
    assert "resuming from step 10" in out
    assert outcome.step == 14 and min(outcome.losses) == 11
    # A step without one of its items is incomplete: skipped too. A checkpoint of another architecture is
    # not a reason to fall back to older steps (they would not fit either, and the run would start over).
    other = tmp_path / "other"
    shutil.copytree(uninterrupted, other)
    shutil.rmtree(other / "checkpoints" / "12" / "data")
    cfg = preset("tiny", intermediate_size=96)
    optimizer, _ = build.make_optimizer(tiny().train, 14)
    abstract = build.abstract_state(cfg, optimizer, state_shardings(cfg, optimizer, sharding.make_mesh((1, 1, 1))))
    expected = r"step 10 does not fit this run: params/layers/mlp/down has shape \(2, 128, 64\), the run needs \(2, 96"
    with pytest.raises(UserError, match=expected):
        Checkpoints(epath.Path(other), tiny().checkpoint).restore_latest(abstract, say=print)
    assert "checkpoint step 12 is incomplete (no data)" in capsys.readouterr().out


def test_a_restore_error_that_is_not_damage_stops_and_names_the_step(uninterrupted, tmp_path, monkeypatch):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)

    def bucket_timeout(*args, **kwargs):  # the step's files and metadata are intact; reading them failed
        raise TimeoutError("the bucket did not answer within 60 s")

    monkeypatch.setattr(ocp.CheckpointManager, "restore", bucket_timeout)
    with pytest.raises(UserError, match=r"step 12 cannot be restored \(TimeoutError: the bucket did not answer"):
        Run(tiny(**{"train.steps": 14}), tmp_path)


def test_when_process_0_cannot_pick_a_step_every_process_stops_with_its_error(tmp_path):
    assert train(tiny(**{"train.steps": 2, "checkpoint.every": 2}), tmp_path).step == 2
    # another architecture on the same workdir: the checkpoint does not fit
    statuses, errors = two_processes(tmp_path, "--config.model.preset=smollm2-135m", offset=4500)
    assert statuses == [2, 2], [e[-2000:] for e in errors]
    for error in errors:
        assert "checkpoint step 2 does not fit this run" in error.strip().splitlines()[-1], error[-2000:]
    assert "on process 0: " in errors[1]


def test_logged_step_time_is_the_wall_time_per_step(tmp_path):
    done = {}
    config = tiny(**{"train.steps": 7, "data.batch_size": 16, "data.seq_len": 512, "eval.every": 0,
                     "checkpoint.every": 0})
    train(config, tmp_path, on_step=lambda step, _: done.setdefault(step, time.perf_counter()))
    logged = {m["step"]: m for m in read_metrics(tmp_path) if "step_time_s" in m}
    for step in range(3, 8):  # once compiled: each logged time is the wall time from the step before
        wall = done[step] - done[step - 1]
        assert abs(logged[step]["step_time_s"] - wall) <= 0.25 * wall, (step, logged[step]["step_time_s"], wall)
    assert all(0 < m["mfu"] < 1 for m in logged.values())


def test_divergence_stops_with_the_last_good_checkpoint(tmp_path):
    config = tiny(**{"train.lr": 1e30, "checkpoint.every": 1, "eval.every": 0})
    with pytest.raises(TrainingDiverged, match=r"training diverged .* last good checkpoint is step (\d+)") as info:
        train(config, tmp_path)
    bad_step = int(str(info.value).split(":")[0].removeprefix("step "))
    good = ocp.CheckpointManager(tmp_path / "checkpoints").latest_step()
    assert good == bad_step - 1
    assert all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path) if "loss" in m)


def test_config_overrides_and_their_errors():
    overrides, rest = split_overrides(["--workdir", "w", "--config.train.lr=3e-4", "--config.data.pack", "False"])
    assert rest == ["--workdir", "w"]
    config = apply_overrides(load_config_file(TINY), overrides + [("mesh.shape", "(2, -1, 1)")])
    assert config.train.lr == 3e-4 and config.data.pack is False and config.mesh.shape == (2, -1, 1)
    with pytest.raises(UserError, match="no such field"):
        apply_overrides(config, [("train.learning_rate", "1")])
    with pytest.raises(UserError, match="no section 'trian'"):
        apply_overrides(config, [("trian.lr", "1")])
    with pytest.raises(UserError, match="train.steps=many"):
        apply_overrides(config, [("train.steps", "many")])


def test_cli_train_errors_are_one_line(tmp_path):
    result = cli("--config", TINY, "--workdir", tmp_path, "--config.train.nope=1")
    assert result.returncode == 2 and "no such field" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {}\n")
    result = cli("--config", bad, "--workdir", tmp_path)
    assert result.returncode == 2 and f"{bad}: get_config() returned dict" in result.stderr


def test_best_metric_must_be_one_the_run_computes(tmp_path):
    with pytest.raises(UserError, match="'macro/all/F1' is neither dev_loss nor an F1 metric of this dev set"):
        Run(tiny(**{"checkpoint.best_metric": "macro/all/F1", "eval.f1_every": 2}), tmp_path)
    with pytest.raises(UserError, match="set eval.f1_every"):
        Run(tiny(**{"checkpoint.best_metric": "macro/wl/f1"}), tmp_path)
    with pytest.raises(UserError, match="needs a dev set"):
        Run(tiny(**{"data.dev": ""}), tmp_path)


def test_dev_records_are_read_once_whatever_the_mixture(tmp_path):
    # Groups of unequal size (12 English SCNM records, 2 of every other subset and language): a mixture at
    # temperature 2 would change their counts. (Rows come as packing places them, longest first.)
    train_scnm = [r for r in load_sample("train") if (r.subset, r.language) == ("SCNM", "en")]
    dev = load_sample("dev") + train_scnm + train_scnm[:4]
    write_jsonl(dev, tmp_path / "dev.jsonl")
    run = Run(tiny(**{"data.mixture_temperature": 2.0, "data.dev": str(tmp_path / "dev.jsonl")}), tmp_path / "run")
    seen = [row[segments == s].tolist() for batch in run.dev.one_epoch()
            for row, segments in zip(batch["tokens"], batch["segment_ids"]) for s in range(1, segments.max() + 1)]
    stats = EncodeStats()
    expected = [encode(r, ByteTokenizer(), run.config.data.seq_len, stats).tokens.tolist() for r in dev]
    assert sorted(seen) == sorted(expected)


def test_a_held_out_dev_set_is_written_to_the_workdir_for_eval(tmp_path):
    train_records = load_sample("train")
    Run(tiny(**{"data.dev": "holdout:2"}), tmp_path)
    written = [Record.from_json(json.loads(line)) for line in (tmp_path / DEV_FILE).read_text("utf-8").splitlines()]
    kept, held, _ = holdout.split(train_records, 2, seed=0)
    assert written == held and len(held) > 2  # 2 per (subset, language) group
    assert not {r.id for r in written} & {r.id for r in kept}


def test_logged_loss_is_the_token_weighted_mean_of_its_steps_without_the_z_loss(tmp_path):
    steps = {}
    train(tiny(**{"log.every": 4, "train.steps": 8, "train.z_loss": 1e-3, "eval.every": 0}), tmp_path,
          on_step=lambda step, metrics: steps.__setitem__(step, metrics))
    logged = {m["step"]: m for m in read_metrics(tmp_path) if "loss" in m}
    assert sorted(logged) == [4, 8]
    for end in (4, 8):
        window = [steps[s] for s in range(end - 3, end + 1)]
        tokens = sum(m["target_tokens"] for m in window)
        for name in ("loss", "z_loss"):
            assert logged[end][name] == pytest.approx(sum(m[name] * m["target_tokens"] for m in window) / tokens)
        assert logged[end]["z_loss"] > 0 and logged[end]["loss"] != pytest.approx(window[-1]["loss"])
