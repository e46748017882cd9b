"""Huge pages for malloc (oie_jax/host_memory.py): the environment the `oie-jax` command restarts
itself with, and the reason for it: a jitted computation with large temporaries stops faulting in
4 KB pages at every call."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from oie_jax import host_memory

FAULTS_PER_CALL = textwrap.dedent("""
    import resource
    import jax, jax.numpy as jnp
    x = jnp.ones((4096, 4096))
    f = jax.jit(lambda x: ((x.T * 2.0 + x) @ jnp.ones(4096)).sum())  # a 64 MB temporary per call
    for _ in range(3):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        f(x).block_until_ready()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
""")


def without_tunables() -> dict:
    return {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}


def faults_per_call(env) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL], capture_output=True, text=True, timeout=300,
                         env=env, check=True)
    return int(out.stdout)


def test_the_tunable_is_added_once_beside_other_tunables_and_can_be_refused(monkeypatch):
    monkeypatch.setattr(host_memory, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(host_memory, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(sys, "platform", "linux")
    assert host_memory.huge_page_environment({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    added = host_memory.huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert added == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert host_memory.huge_page_environment(added) is None  # a restarted process does not restart again
    assert host_memory.huge_page_environment({"OIE_JAX_DEFAULT_MALLOC": "1"}) is None
    monkeypatch.setattr(host_memory, "thp_mode", lambda: "never")
    assert host_memory.huge_page_environment({}) is None
    monkeypatch.setattr(host_memory, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(host_memory, "glibc_version", lambda: (2, 31))  # no such tunable before 2.35
    assert host_memory.huge_page_environment({}) is None


@pytest.mark.skipif(host_memory.huge_page_environment({}) is None,
                    reason="needs glibc >= 2.35 on Linux with transparent huge pages in madvise mode")
def test_huge_pages_cut_the_page_faults_of_large_temporaries():
    plain = without_tunables()
    default = faults_per_call(plain)
    huge = faults_per_call(host_memory.huge_page_environment(plain))
    assert default > 8192  # the temporary mapped afresh at every call in 4 KB pages (16,384 of them)
    assert huge * 10 < default, (huge, default)


@pytest.mark.skipif(host_memory.huge_page_environment({}) is None,
                    reason="needs glibc >= 2.35 on Linux with transparent huge pages in madvise mode")
def test_only_a_process_started_as_the_command_restarts_itself_once_with_the_same_command_line(tmp_path):
    code = ("import os, sys; print('started', flush=True); from oie_jax.host_memory import restart_with_huge_pages; "
            "restart_with_huge_pages({script}); print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
    script = tmp_path / "bench_x.py"
    script.write_text(code.format(script="__file__"))

    def run(*command):
        return subprocess.run([sys.executable, *command, "a", "b"], capture_output=True, text=True,
                              env=without_tunables(), timeout=60, check=True).stdout.splitlines()

    assert run(str(script)) == ["started", "started", "glibc.malloc.hugetlb=1 ['a', 'b']"]
    # An interpreter that merely calls in (a notebook kernel, a debugger, `python -c`) is left as it is,
    # and so is a script that names another file as its own.
    assert run("-c", code.format(script="")) == ["started", "None ['a', 'b']"]
    assert run("-c", code.format(script=repr(str(script)))) == ["started", "None ['a', 'b']"]
    script.write_text(code.format(script=repr(str(tmp_path / "other.py"))))
    assert run(str(script)) == ["started", "None ['a', 'b']"]


def test_resident_bytes_counts_what_the_process_holds():
    before = host_memory.resident_bytes()
    held = np.ones(50_000_000)  # 400 MB, written
    during = host_memory.resident_bytes()
    assert during["now"] - before["now"] > 0.9 * held.nbytes
    assert during["peak"] >= during["now"]


def test_only_the_generating_commands_restart_with_huge_pages(monkeypatch):
    from oie_jax import cli

    restarted = []
    monkeypatch.setattr(host_memory, "restart_with_huge_pages", lambda: restarted.append(sys.argv[1]))
    monkeypatch.setattr(cli, "main", lambda: 0)  # the dispatch alone: no command runs
    for command in ("eval", "train", "serve", "convert", "sweep", "extract"):
        monkeypatch.setattr(sys, "argv", ["oie-jax", command])
        cli.entry()
    assert restarted == ["eval", "serve", "extract"]  # training measured slower with them
