"""The training run end to end on the tiny config: exact resume after SIGKILL and SIGTERM, partial and
damaged checkpoints, divergence, several JAX processes, config overrides and dry runs."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from oie_jax.errors import UserError
from oie_jax.train.config_file import apply_overrides, load_config_file, split_overrides
from oie_jax.train.loop import TrainingDiverged, train
from oie_jax.train.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_debug.py"

# Trains the tiny config and sends itself a signal after a given step: a real SIGKILL (no chance to
# save) or SIGTERM (preemption), at a known point of the run.
SIGNAL_AFTER_STEP = textwrap.dedent("""
    import os, signal, sys
    from oie_jax.train.config_file import load_config_file
    from oie_jax.train.loop import train
    workdir, step, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    def on_step(done, metrics):
        if done == step:
            os.kill(os.getpid(), getattr(signal, name))
    outcome = train(load_config_file(sys.argv[4]), workdir, on_step=on_step)
    print("STOPPED_BY", outcome.stopped_by, outcome.step)
""")


def tiny(**overrides):
    return apply_overrides(load_config_file(TINY), [(k, repr(v)) for k, v in overrides.items()])


def losses(workdir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def run(args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=env or os.environ, **kwargs)


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return run(["-m", "oie_jax.cli", "train", *map(str, args)], env=env)


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


def test_sigkill_then_rerun_equals_uninterrupted(uninterrupted, tmp_path):
    killed = run(["-c", SIGNAL_AFTER_STEP, tmp_path, "7", "SIGKILL", TINY])
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert max(losses(tmp_path)) == 7
    resumed = cli("--config", TINY, "--workdir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 5" in resumed.stdout
    assert losses(tmp_path) == losses(uninterrupted)  # bitwise: same batches, same state, float32 on CPU


def test_sigterm_saves_the_current_step_and_resumes_from_it(uninterrupted, tmp_path):
    stopped = run(["-c", SIGNAL_AFTER_STEP, tmp_path, "7", "SIGTERM", TINY])
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert "STOPPED_BY SIGTERM 7" in stopped.stdout
    assert "SIGTERM received: saved step 7" in stopped.stdout
    assert 7 in ocp.CheckpointManager(tmp_path / "checkpoints").all_steps()
    resumed = cli("--config", TINY, "--workdir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 7" in resumed.stdout
    assert losses(tmp_path) == losses(uninterrupted)


def test_cut_off_and_damaged_checkpoints_are_not_chosen(uninterrupted, tmp_path, capsys):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    checkpoints = tmp_path / "checkpoints"
    # What a save killed halfway leaves: Orbax's temporary directory, never renamed to its step.
    shutil.copytree(checkpoints / "12", checkpoints / "14.orbax-checkpoint-tmp-1795")
    # And a step whose array files were lost afterwards (a damaged disk, a partial copy).
    for data in (checkpoints / "12" / "state").rglob("*"):
        if data.is_file() and "metadata" not in data.name:
            data.unlink()
    outcome = train(tiny(**{"train.steps": 14}), tmp_path)
    out = capsys.readouterr().out
    assert "ignoring 14.orbax-checkpoint-tmp-1795: a checkpoint cut off mid-save" in out
    assert "checkpoint step 12 cannot be restored" in out
    assert "resuming from step 10" in out
    assert outcome.step == 14 and min(outcome.losses) == 11


def test_divergence_stops_with_the_last_good_checkpoint(tmp_path):
    config = tiny(**{"train.lr": 1e30, "checkpoint.every": 1, "eval.every": 0})
    with pytest.raises(TrainingDiverged, match=r"training diverged .* last good checkpoint is step (\d+)") as info:
        train(config, tmp_path)
    bad_step = int(str(info.value).split(":")[0].removeprefix("step "))
    good = ocp.CheckpointManager(tmp_path / "checkpoints").latest_step()
    assert good == bad_step - 1
    assert all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path) if "loss" in m)


MULTI_HOST = ["--config.mesh.shape=(1, 2, 1)", "--config.mesh.dcn_shape=(1, 2, 1)", "--config.eval.every=2",
              "--config.checkpoint.every=2"]


def test_two_processes_train_checkpoint_and_resume_like_one(tmp_path):
    """2 processes x 2 CPU devices (gloo): fsdp=4 laid out as 2 per process (ICI) x 2 processes (DCN).
    4 steps, then a second launch extends the run to 6; the losses equal one process on 4 devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = 21000 + os.getpid() % 9000

    def launch(steps, port):
        procs = [subprocess.Popen(
            [sys.executable, "-m", "oie_jax.cli", "train", "--config", str(TINY), "--workdir", str(tmp_path / "multi"),
             f"--config.train.steps={steps}", *MULTI_HOST, "--coordinator-address", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(rank)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
        outputs = [p.communicate(timeout=600) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outputs]
        return outputs[0][0]

    launch(4, port)
    assert "resuming from step 4" in launch(6, port + 1)
    one = cli("--config", TINY, "--workdir", tmp_path / "one", "--config.train.steps=6",
              "--config.mesh.shape=(1, 4, 1)", "--config.eval.every=2", "--config.checkpoint.every=2",
              env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert one.returncode == 0, one.stderr[-2000:]
    multi, single = losses(tmp_path / "multi"), losses(tmp_path / "one")
    assert sorted(multi) == list(range(1, 7))
    np.testing.assert_allclose([multi[s] for s in range(1, 7)], [single[s] for s in range(1, 7)], rtol=1e-5)


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


@pytest.mark.parametrize("name", ["llama3_8b_mmm_tpu", "llama3_8b_mmm_gpu", "llama2_13b_mmm_tpu", "smollm2_mmm",
                                  "sample_smollm2"])
def test_dry_run_plans_every_config(name):
    from oie_jax.train.plan import plan

    config = load_config_file(ROOT / "configs" / f"{name}.py")
    devices = config.mesh.devices = config.mesh.devices or 4  # the CPU configs: plan a 4-device host
    report = plan(config)
    assert "train step traced on the planned mesh" in report
    if config.mesh.device_memory_gb:
        assert ": fits" in report
    assert f"= {devices} devices" in report


def test_dry_run_refuses_a_batch_that_does_not_split():
    from oie_jax.train.plan import plan

    config = load_config_file(ROOT / "configs" / "llama3_8b_mmm_gpu.py")
    config.data.batch_size = 12  # 3 rows per micro-batch over 8 GPUs
    with pytest.raises(UserError, match="does not divide over 8 batch shards"):
        plan(config)


def test_dev_f1_during_training_feeds_the_best_checkpoint(tmp_path):
    from oie_jax.data.sample import load_sample
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.eval.evaluate import evaluate
    from oie_jax.models.checkpoint import load_model

    config = tiny(**{"train.steps": 4, "eval.every": 0, "eval.f1_every": 2, "eval.f1_examples": 6,
                     "eval.max_new_tokens": 8, "checkpoint.best_metric": "macro/wl/f1", "checkpoint.best_mode": "max",
                     "export.model": True})
    train(config, tmp_path)
    logged = {m["step"]: m for m in read_metrics(tmp_path) if "macro/wl/f1" in m}
    assert sorted(logged) == [0, 2, 4]  # before training too
    assert sorted(int(p.name) for p in (tmp_path / "best").iterdir())  # the first F1 is the best so far
    # The number at the end of the run is what `oie-jax eval` computes for the exported model.
    model = load_model(tmp_path / "model")
    _, scores = evaluate(model, load_tokenizer("bytes"), load_sample("dev")[:6], max_new_tokens=8, progress=False,
                         log=lambda _: None)
    assert scores.metrics() == {k: v for k, v in logged[4].items() if k in scores.metrics()}
