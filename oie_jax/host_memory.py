"""The host process's memory: how much it holds (`resident_bytes`), and transparent huge pages for glibc
malloc, so that XLA's CPU runtime does not fault in gigabytes of 4 KB pages at every step.

XLA's CPU executables allocate their temporaries (gigabytes for a train step) at each call and free them
after; glibc serves allocations that large with a fresh mmap and unmaps them on free, so every step pays
the kernel again to map and zero the same memory in 4 KB pages (SmolLM2's train step on 4 x 256 tokens:
850k page faults and 2.5 s of system time per 5.6 s step). With glibc's `glibc.malloc.hugetlb=1`
tunable those mappings are backed by 2 MB pages where the kernel's transparent huge pages are in
`madvise` mode: 2.4k faults and 0.5 s of system time, 4.6 s per step. Nothing else about the heap
changes. A tunable is read when the process starts, so the `oie-jax` command starts itself once more
with it set. (Keeping freed memory instead, with one arena and no mmap or trimming, removed the faults
too but grew a training process's heap to 24 GB within three steps.)
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


def restart_with_huge_pages() -> None:
    """Start this process's command line again in its place with the tunable set (same PID, signals and
    streams), when that changes anything; else return. Call it first thing, before any work."""
    env = huge_page_environment(dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
