"""`launch/tpu_pod.sh` run the way a user runs it, against a fake `gcloud` on PATH (tests/fakes/gcloud)
that runs each worker's remote commands in a local directory, and the bucket of tests/test_bucket_workdir.py
(a GCS server on 127.0.0.1). The worker is one process with SLURM's variables set, the one multi-process
environment JAX detects off a TPU. Checked: a dropped connection leaves the training running and `logs`
finds it; a preempted slice is re-created, set up and the run resumed; `stop` saves the step and exits 0."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.helpers import xla_flags
from tests.test_bucket_workdir import free_port, gcs, listing  # noqa: F401  (gcs is a fixture)
from tests.test_train_loop import ROOT

LAUNCH = ROOT / "launch"
STEPS = ["--config.eval.every=0", "--config.log.every=1"]


@pytest.fixture
def pod(gcs, tmp_path):  # noqa: F811
    """(environment of a user with the fake gcloud first on PATH, the fake's directory); a READY slice."""
    root = tmp_path / "gcloud"
    (root / "worker-0").mkdir(parents=True)
    (root / "state").write_text("READY\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").symlink_to(ROOT / "tests" / "fakes" / "gcloud")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD=str(root), POLL_SECONDS="1",
               # the worker: this checkout's oie-jax, a bucket on 127.0.0.1, one process JAX sees as a cluster
               OIE_JAX=str(ROOT / ".venv" / "bin" / "oie-jax"), RUN_DIR=str(ROOT), STORAGE_EMULATOR_HOST=gcs,
               TENSORSTORE_GCS_HTTP_URL=gcs, GOOGLE_CLOUD_PROJECT="test", JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(1), SLURM_JOB_ID="7", SLURM_NTASKS="1",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NODELIST="127.0.0.1", SLURM_STEP_NUM_NODES="1",
               JAX_COORDINATOR_PORT=str(free_port()),
               # setup: the package alone (its dependencies are this machine's), no jax[tpu]
               PIP_NO_DEPS="1", EXTRA="")
    shutil.copy(LAUNCH / "worker_train.sh", root / "worker-0")
    return env, root


def tpu_pod(env, *args, **kwargs):
    return subprocess.Popen(["bash", str(LAUNCH / "tpu_pod.sh"), "--name", "n", "--zone", "z", *args], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def run_args(workdir: str, steps: int) -> list[str]:
    return ["--config", "configs/tiny_debug.py", "--workdir", workdir, "run", "--",
            f"--config.train.steps={steps}", "--config.checkpoint.every=20", *STEPS]


def wait_for(condition, what: str, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.5)


def worker_log(root) -> str:
    path = root / "worker-0" / "oie-jax-train.log"
    return path.read_text(errors="replace") if path.exists() else ""


def training(log: str) -> bool:
    """Whether the log shows steps being taken (tqdm's rate)."""
    return "step/s" in log or "s/step" in log


def worker(root, env, command: str) -> str:
    return subprocess.run(["bash", "worker_train.sh", command], cwd=root / "worker-0", capture_output=True,
                          text=True, env=dict(env, HOME=str(root / "worker-0")), timeout=60).stdout.strip()


def test_a_dropped_connection_leaves_the_run_going_and_logs_follows_it_to_the_end(pod, gcs):  # noqa: F811
    env, root = pod
    user = tpu_pod(env, *run_args("gs://bucket/run", 120))
    wait_for(lambda: training(worker_log(root)), "the training to start")
    os.killpg(user.pid, signal.SIGKILL)  # the user's terminal, ssh and all, is gone
    user.communicate(timeout=30)
    time.sleep(2)
    assert worker(root, env, "status").startswith("running ")
    logs = tpu_pod(env, "logs")
    out, err = logs.communicate(timeout=300)
    assert logs.returncode == 0, err[-3000:]
    assert "fresh start" in out and "120/120" in out  # from its first line to its end
    assert worker(root, env, "status") == "exited 0"
    copied = [name for name in listing(gcs, "run/logs/") if name.endswith(".log")]
    assert len(copied) == 1  # the log beside the run, in the bucket


def test_a_preempted_slice_is_recreated_and_the_run_resumes_from_the_bucket(pod):
    env, root = pod
    steps = 100
    user = tpu_pod(env, "--retries", "1", *run_args("gs://bucket/preempted", steps))
    wait_for(lambda: f"| 50/{steps}" in worker_log(root), "step 50 (checkpoints of steps 20 and 40 behind it)")
    # Preemption: the slice's state changes and its processes die with it.
    (root / "state").write_text("PREEMPTED\n")
    os.killpg(int((root / "worker-0" / "oie-jax-train.pid").read_text()), signal.SIGKILL)
    out, err = user.communicate(timeout=600)
    assert user.returncode == 0, err[-3000:]
    assert "slice n is PREEMPTED (preempted); re-creating it (retry 1 of 1)" in err
    calls = (root / "calls").read_text()
    assert "tpu-vm delete n" in calls and "tpu-vm create n" in calls and "worker_setup.sh" in calls
    assert "resuming from step" in out and f"{steps}/{steps}" in out


def test_stop_saves_the_step_and_exits_0(pod):
    env, root = pod
    user = tpu_pod(env, *run_args("gs://bucket/stopped", 100_000))
    wait_for(lambda: training(worker_log(root)), "the training to start")
    stop = tpu_pod(env, "stop")
    out, err = stop.communicate(timeout=300)
    assert stop.returncode == 0, err
    assert "worker_train.sh: stopped" in err
    assert "SIGTERM received: saved step" in worker_log(root)
    assert worker(root, env, "status") == "exited 143"  # 128 + SIGTERM, for schedulers
    user.communicate(timeout=60)
    assert user.returncode == 1  # the attached run reports that it ended short


@pytest.mark.parametrize("queue,message", [
    ("FAILED", "slice n: its queued resource is FAILED (gcloud compute tpus queued-resources describe n-qr)"),
    ("WAITING_FOR_RESOURCES", "slice n is still WAITING_FOR_RESOURCES after 0 minutes (--wait-minutes)"),
])
def test_a_queued_slice_that_does_not_come_is_said_in_one_line(tmp_path, queue, message):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").symlink_to(ROOT / "tests" / "fakes" / "gcloud")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD=str(tmp_path),
               FAKE_QUEUED_STATE=queue, POLL_SECONDS="0")
    result = tpu_pod(env, "--queued", "--spot", "--wait-minutes", "0", "create")
    out, err = result.communicate(timeout=60)
    assert result.returncode == 2 and err.strip().splitlines()[-1] == f"tpu_pod.sh: {message}", err
