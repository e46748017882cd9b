"""The host process's memory: how much it holds (`resident_bytes`), and transparent huge pages for glibc
malloc, so that XLA's CPU runtime does not fault in gigabytes of 4 KB pages at every step.

XLA's CPU executables allocate their temporaries (gigabytes for a train step) at each call and free them
after; glibc serves allocations that large with a fresh mmap and unmaps them on free, so every step pays
the kernel again to map and zero the same memory in 4 KB pages (SmolLM2's train step on 4 x 256 tokens:
850k page faults and 2.5 s of system time per 5.6 s step). With glibc's `glibc.malloc.hugetlb=1`
tunable those mappings are backed by 2 MB pages where the kernel's transparent huge pages are in
`madvise` mode: 2.4k faults and 0.5 s of system time, 4.6 s per step. Nothing else about the heap
changes. A tunable is read when the process starts, so the generating `oie-jax` commands start themselves
once more with it set (`oie_jax.cli.HUGE_PAGE_COMMANDS`). Measured again with benchmarks/bench_huge_pages.py
once the sample config rematerialised its blocks (step temporaries 1.0 GB instead of 7.0): batch-1
generation 1.39x faster with it, the train step 0.85x, so training keeps glibc's defaults. (Keeping
freed memory instead, with one arena and no mmap or trimming, removed the faults too but grew a training
process's heap to 24 GB within three steps.)
"""

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "OIE_JAX_DEFAULT_MALLOC"  # set to 1 to keep glibc's defaults
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def resident_bytes() -> dict[str, int] | None:
    """This process's resident memory now and at its largest ("now", "peak"), in bytes; None where
    /proc/self/status does not say (not Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status", encoding="ascii"))
        return {"now": int(fields["VmRSS"].split()[0]) * 1024, "peak": int(fields["VmHWM"].split()[0]) * 1024}
    except (OSError, KeyError, ValueError):
        return None


def glibc_version() -> tuple[int, ...]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else ()
    except (AttributeError, OSError, ValueError):  # not glibc, or no confstr
        return ()


def thp_mode() -> str:
    """The kernel's transparent huge page mode (always, madvise, never), "" when unknown."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def huge_page_environment(env: dict) -> dict | None:
    """`env` with the tunable added to GLIBC_TUNABLES, or None where it would change nothing: already
    set, opted out, not glibc 2.35+ on Linux, or the kernel's mode is not madvise ("always" gives huge
    pages without asking, "never" not at all)."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if (env.get(OPT_OUT) == "1" or TUNABLE in tunables or not sys.platform.startswith("linux")
            or glibc_version() < (2, 35) or thp_mode() != "madvise"):
        return None
    return {**env, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"}


def started_as_command(script: str | None = None) -> bool:
    """Whether this process was started to run the `oie-jax` command (its console script, or `python -m
    oie_jax.cli`) or the file `script` (a benchmark's own): only such a process may be replaced by itself.
    An interpreter, notebook kernel, test runner or debugger that calls in is never restarted."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "oie_jax.cli.__main__":
        return True
    path = getattr(main, "__file__", None)
    if path is None:
        return False
    return Path(path).name == "oie-jax" or (script is not None and Path(path).resolve() == Path(script).resolve())


def restart_with_huge_pages(script: str | None = None) -> None:
    """Start this process's command line again in its place with the tunable set (same PID, signals and
    streams), when that changes anything and the process was started as the `oie-jax` command or as
    `script` (`started_as_command`); else return. Call it first thing, before any work."""
    env = huge_page_environment(dict(os.environ))
    if env is not None and started_as_command(script):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
