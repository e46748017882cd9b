"""Every benchmark runs (its --smoke mode: one round, random tiny models), so that a change that breaks
one fails here; their speeds are measured by running them, never asserted in a test."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# Every benchmark, and the modes that time something else (flags after the script's name).
RUNS = [(p.name,) for p in sorted(BENCHMARKS.glob("bench_*.py"))] + [("bench_decode.py", "--constrained")]


@pytest.mark.parametrize("command", RUNS, ids=" ".join)
def test_every_benchmark_runs_and_names_its_machine(command):
    script, *flags = command
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--smoke", *flags], capture_output=True,
                            text=True, cwd=BENCHMARKS.parent, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "GFLOP/s" in lines[0] and "GB/s" in lines[0], lines[:2]
    last = "attention xla" if script == "bench_accelerator.py" else "ratio="  # no fused kernel on a CPU
    assert any(line.startswith(last) for line in lines), result.stdout[-2000:]
