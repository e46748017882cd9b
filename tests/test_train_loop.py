"""The training run end to end on the tiny config: exact resume after SIGKILL and SIGTERM, partial and
damaged checkpoints, divergence, several JAX processes, config overrides and the compilation cache."""

import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx

from oie_jax import sharding
from oie_jax.data.format import Record
from oie_jax.data.packing import EncodeStats, encode
from oie_jax.data.sample import load_sample
from oie_jax.data.sources.registry import write_jsonl
from oie_jax.data.tokenizer import ByteTokenizer
from oie_jax.errors import UserError
from oie_jax.eval.evaluate import evaluate
from oie_jax.models.checkpoint import load_model
from oie_jax.models.config import preset
from oie_jax.train import build
from oie_jax.train.checkpointing import Checkpoints
from oie_jax.train.config_file import apply_overrides, load_config_file, split_overrides
from oie_jax.train.loop import Run, TrainingDiverged, train
from oie_jax.train.metrics_log import read_metrics
from oie_jax.train.step import state_shardings
from tests.metrics_reference import reference_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_debug.py"

# Trains the tiny config and sends itself a signal after a given step: a real SIGKILL (no chance to
# save) or SIGTERM (preemption), at a known point of the run. The signal waits for the background save of
# step 5 to be complete, so that the run is cut off with a known latest checkpoint.
SIGNAL_AFTER_STEP = textwrap.dedent("""
    import os, signal, sys, time
    from oie_jax.train.config_file import load_config_file
    from oie_jax.train.loop import train
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
    # train step that the killed one compiled from the workdir's cache.
    env = {**os.environ, "JAX_LOG_COMPILES": "1", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
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
    resumed = cli("--config", TINY, "--workdir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {step}" in resumed.stdout
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
    first = cli("--config", TINY, "--workdir", tmp_path, "--config.train.steps=2", "--config.checkpoint.every=2")
    assert first.returncode == 0, first.stderr[-2000:]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = 21000 + (os.getpid() + 4500) % 9000
    procs = [subprocess.Popen(  # another architecture on the same workdir: the checkpoint does not fit
        [sys.executable, "-m", "oie_jax.cli", "train", "--config", str(TINY), "--workdir", str(tmp_path),
         "--config.model.preset=smollm2-135m", "--config.mesh.shape=(1, 2, 1)", "--config.mesh.dcn_shape=(1, 2, 1)",
         "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], [e[-2000:] for e in errors]
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


def test_two_processes_train_evaluate_checkpoint_and_resume_like_one(learned, tmp_path):
    """2 processes x 2 CPU devices (gloo): fsdp=4 laid out as 2 per process (ICI) x 2 processes (DCN),
    fine-tuning the learned model of the easy task with dev loss and dev F1 (generation split over both
    processes). 4 steps, then a second launch extends the run to 6; losses and F1 equal one process on 4
    devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = 21000 + os.getpid() % 9000
    run_dir, _, _ = learned
    common = [f"--config.model.init={run_dir / 'model'}", f"--config.data.train={run_dir.parent / 'train.jsonl'}",
              f"--config.data.dev={run_dir.parent / 'dev.jsonl'}", "--config.data.seq_len=128",
              "--config.eval.every=2", "--config.eval.f1_every=2", "--config.eval.max_new_tokens=48",
              "--config.checkpoint.every=2", "--config.checkpoint.best_metric=macro/wl/f1",
              "--config.checkpoint.best_mode=max"]

    def launch(steps, port):
        procs = [subprocess.Popen(
            [sys.executable, "-m", "oie_jax.cli", "train", "--config", str(TINY), "--workdir", str(tmp_path / "multi"),
             f"--config.train.steps={steps}", *common, "--config.mesh.shape=(1, 2, 1)",
             "--config.mesh.dcn_shape=(1, 2, 1)", "--coordinator-address", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(rank)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
        outputs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outputs]
        # One voice: evaluation lines come from process 0 only.
        assert "dev_loss" in outputs[0][0] and "dev_loss" not in "".join(outputs[1]), outputs[1]
        return outputs[0][0]

    launch(4, port)
    assert "resuming from step 4" in launch(6, port + 1)
    one = cli("--config", TINY, "--workdir", tmp_path / "one", "--config.train.steps=6", *common,
              "--config.mesh.shape=(1, 4, 1)", env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert one.returncode == 0, one.stderr[-2000:]
    multi, single = losses(tmp_path / "multi"), losses(tmp_path / "one")
    assert sorted(multi) == list(range(1, 7))
    np.testing.assert_allclose([multi[s] for s in range(1, 7)], [single[s] for s in range(1, 7)], rtol=1e-5)

    def dev_f1(workdir):
        return {m["step"]: m["macro/wl/f1"] for m in read_metrics(workdir) if "macro/wl/f1" in m}

    assert sorted(dev_f1(tmp_path / "multi")) == [0, 2, 4, 6] and min(dev_f1(tmp_path / "multi").values()) > 0.5
    assert dev_f1(tmp_path / "multi") == dev_f1(tmp_path / "one")


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


# An easy synthetic task: "NAME visited CITY." -> "Travel/NER/:Person;NAME:Location;CITY". The dev set holds
# pairs never seen in training, so the model must copy both names from the text.
NAMES = ("Ann", "Bob", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana")
CITIES = ("Rome", "Oslo", "Lima", "Kyoto", "Paris", "Cairo", "Quito", "Delhi")
LEARN_STEPS = 200


def visits() -> list[Record]:
    pairs = list(itertools.product(NAMES, CITIES))
    random.Random(0).shuffle(pairs)
    return [Record(text=f"{name} visited {city}.", task="NER", label="Travel",
                   items=(("Person", name), ("Location", city)), id=f"v{i}", subset="SCNM", language="en")
            for i, (name, city) in enumerate(pairs)]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The tiny random model trained on the easy task, dev F1 every 50 steps choosing best/."""
    directory = tmp_path_factory.mktemp("learned")
    records = visits()
    write_jsonl(records[:48], directory / "train.jsonl")
    write_jsonl(records[48:], directory / "dev.jsonl")
    config = tiny(**{"data.train": str(directory / "train.jsonl"), "data.dev": str(directory / "dev.jsonl"),
                     "data.seq_len": 128, "data.batch_size": 16, "train.steps": LEARN_STEPS, "train.lr": 4e-3,
                     "train.warmup_fraction": 0.1, "train.decay": "cosine", "eval.every": 0, "eval.f1_every": 50,
                     "eval.max_new_tokens": 48, "eval.batch_size": 16, "checkpoint.best_metric": "macro/all/f1",
                     "checkpoint.best_mode": "max", "checkpoint.every": 50, "export.model": True, "log.every": 25})
    outcome = train(config, directory / "run")
    return directory / "run", outcome, records[48:]


def test_a_tiny_model_learns_an_easy_task_and_dev_f1_picks_best(learned):
    run_dir, outcome, dev = learned
    f1 = {m["step"]: m["macro/all/f1"] for m in read_metrics(run_dir) if "macro/all/f1" in m}
    assert sorted(f1) == [0, 50, 100, 150, 200]
    assert f1[0] < 0.1 and max(f1.values()) >= 0.9, f1
    best = max(step for step, value in f1.items() if value == max(f1.values()))  # a tie keeps the later step
    assert [p.name for p in (run_dir / "best").iterdir()] == [str(best)] and outcome.exported_step == best
    # WORKDIR/model holds best/'s parameters: generating with them gives the logged F1, which the plain-Python
    # reference computes from the same outputs.
    outputs, scores = evaluate(load_model(run_dir / "model"), ByteTokenizer(), dev,
                               max_new_tokens=48, progress=False, log=lambda _: None)
    assert scores.metric("macro/all/f1") == pytest.approx(f1[best])
    _, reference = reference_metrics(dev, outputs)
    assert reference == pytest.approx(scores.metrics())


def test_best_keeps_the_later_of_equal_values_and_never_a_worse_one(tmp_path):
    params = {"w": np.arange(4, dtype=np.float32)}
    for mode, values in (("max", (0.5, 0.5, 0.4)), ("min", (0.5, 0.5, 0.6))):
        settings = tiny(**{"checkpoint.best_metric": "macro/all/f1", "checkpoint.best_mode": mode}).checkpoint
        checkpoints = Checkpoints(epath.Path(tmp_path / mode), settings)
        kept = [checkpoints.offer_best(step, params, {"macro/all/f1": value}, {})
                for step, value in zip((1, 2, 3), values)]
        checkpoints.close()
        assert kept == [True, True, False] and checkpoints.best_so_far == (2, 0.5)
        assert [p.name for p in (tmp_path / mode / "best").iterdir()] == ["2"]


def test_best_and_model_hold_the_step_where_dev_f1_peaked_before_the_end(learned, tmp_path):
    """Fine-tuning the learned model with a destructive learning rate: its first update has learning rate 0
    (warmup), so steps 0 and 1 tie at the peak and step 1 is kept; later evaluations are worse."""
    run_dir, _, _ = learned
    config = tiny(**{"model.init": str(run_dir / "model"), "data.train": str(run_dir.parent / "train.jsonl"),
                     "data.dev": str(run_dir.parent / "dev.jsonl"), "data.seq_len": 128, "data.batch_size": 16,
                     "train.steps": 4, "train.lr": 1.0, "train.warmup_fraction": 0.5, "train.decay": "constant",
                     "eval.every": 0, "eval.f1_every": 1, "eval.max_new_tokens": 48,
                     "checkpoint.best_metric": "macro/all/f1", "checkpoint.best_mode": "max", "checkpoint.every": 0,
                     "export.model": True})
    outcome = train(config, tmp_path)
    f1 = {m["step"]: m["macro/all/f1"] for m in read_metrics(tmp_path) if "macro/all/f1" in m}
    assert f1[0] == f1[1] == max(f1.values()) and f1[4] < f1[1], f1
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["1"] and outcome.exported_step == 1
    before, after = load_model(run_dir / "model"), load_model(tmp_path / "model")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(before)),
                                                    jax.tree.leaves(nnx.state(after))))


def test_export_any_step_of_a_run(learned, tmp_path, capsys):
    from oie_jax import cli
    from oie_jax.models.checkpoint import load_config, load_params

    run_dir, outcome, _ = learned
    assert cli.main(["export", str(run_dir), str(tmp_path / "best")]) == 0
    assert f"the parameters of step {outcome.exported_step} (best/{outcome.exported_step})" in capsys.readouterr().out
    cfg = load_config(run_dir / "model")
    exported, model = load_params(tmp_path / "best", cfg), load_params(run_dir / "model", cfg)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(model)))
    assert cli.main(["export", str(run_dir), str(tmp_path / "latest"), "--from", "latest"]) == 0
    assert cli.main(["export", str(run_dir), str(tmp_path / "hf"), "--from", "150", "--format", "hf"]) == 0
    printed = capsys.readouterr().out
    assert f"the parameters of step {LEARN_STEPS} (checkpoints/{LEARN_STEPS})" in printed
    assert "the parameters of step 150 (checkpoints/150)" in printed
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "config.json").is_file()
    assert cli.main(["export", str(run_dir), str(tmp_path / "x"), "--from", "7"]) == 2
    assert "no step 7 in this run" in capsys.readouterr().err
    # best/ exports on its own (a run copied without its checkpoints/).
    shutil.copytree(run_dir / "best", tmp_path / "best_only" / "best")
    assert cli.main(["export", str(tmp_path / "best_only"), str(tmp_path / "alone")]) == 0, capsys.readouterr().err
    alone = load_params(tmp_path / "alone", cfg)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(model)))
    # A best/ step saved without the run config (older runs) takes the one of checkpoints/.
    shutil.copytree(run_dir, tmp_path / "older", ignore=shutil.ignore_patterns("compilation_cache"))
    shutil.rmtree(tmp_path / "older" / "best" / str(outcome.exported_step) / "config")
    assert cli.main(["export", str(tmp_path / "older"), str(tmp_path / "older_best")]) == 0


def test_best_metric_must_be_one_the_run_computes(tmp_path):
    with pytest.raises(UserError, match="'macro/all/F1' is neither dev_loss nor an F1 metric of this dev set"):
        Run(tiny(**{"checkpoint.best_metric": "macro/all/F1", "eval.f1_every": 2}), tmp_path)
    with pytest.raises(UserError, match="set eval.f1_every"):
        Run(tiny(**{"checkpoint.best_metric": "macro/wl/f1"}), tmp_path)
    with pytest.raises(UserError, match="needs a dev set"):
        Run(tiny(**{"data.dev": ""}), tmp_path)


def test_dev_records_are_read_once_in_order_whatever_the_mixture(tmp_path):
    # Groups of unequal size (12 English SCNM records, 2 of every other subset and language): a mixture at
    # temperature 2 would change both their counts and their order.
    train_scnm = [r for r in load_sample("train") if (r.subset, r.language) == ("SCNM", "en")]
    dev = load_sample("dev") + train_scnm + train_scnm[:4]
    write_jsonl(dev, tmp_path / "dev.jsonl")
    run = Run(tiny(**{"data.mixture_temperature": 2.0, "data.dev": str(tmp_path / "dev.jsonl")}), tmp_path / "run")
    seen = [row[segments == s].tolist() for batch in run.dev.one_epoch()
            for row, segments in zip(batch["tokens"], batch["segment_ids"]) for s in range(1, segments.max() + 1)]
    stats = EncodeStats()
    expected = [encode(r, ByteTokenizer(), run.config.data.seq_len, stats).tokens.tolist() for r in dev]
    assert seen == expected


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
