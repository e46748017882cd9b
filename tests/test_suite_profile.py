"""`make test-profile`'s logger and report, on a real process: its compilations, whether the persistent cache
answered them, and its CPU time."""

import json
import os
import subprocess
import sys
from pathlib import Path

PROFILE = Path(__file__).resolve().parent / "suite_profile"
PROGRAM = "import jax, jax.numpy as jnp; jax.jit(lambda x: jnp.sin(x) * 2)(jnp.arange(3.0)).block_until_ready()"


def test_a_process_logs_its_compilations_cache_hits_and_cpu(tmp_path):
    log = tmp_path / "profile.jsonl"
    env = {**os.environ, "OIE_SUITE_PROFILE": str(log), "PYTHONPATH": str(PROFILE),
           "PYTEST_CURRENT_TEST": "tests/test_x.py::test_y (call)",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    for _ in range(2):  # compiled, then loaded from the persistent cache
        subprocess.run([sys.executable, "-c", PROGRAM], env=env, check=True, timeout=120)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    programs = [r for r in records if r["kind"] == "compile" and r["program"] == "jit(<lambda>)"]
    assert [r["cached"] for r in programs] == [False, True], programs
    exits = [r for r in records if r["kind"] == "exit"]
    assert len(exits) == 2 and all(r["cpu"] > 0 and not r["pytest"] for r in exits), exits
    assert {r["test"] for r in records} == {"tests/test_x.py::test_y"}

    report = subprocess.run([sys.executable, str(PROFILE / "report.py"), str(log)], capture_output=True, text=True,
                            check=True).stdout
    loaded = sum(r["kind"] == "compile" and r["cached"] for r in records)
    assert "2 commands the tests started" in report and f"{loaded} loaded from the persistent cache" in report, report
    assert "tests/test_x.py" in report and "jit(<lambda>)" in report, report
