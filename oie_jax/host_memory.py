"""glibc malloc settings that stop XLA's CPU runtime from faulting in fresh pages at every step.

XLA's CPU executables allocate their temporaries (gigabytes for a train step) from its worker threads
at each call and free them after. glibc serves an allocation that large from a thread's arena with a
fresh mmap, and the free unmaps it, so every step pays the kernel again to map and zero the same memory:
SmolLM2's train step on 4 x 256 tokens took 850k page faults and 1.8 s of system time per step (4.9 s in
all). With one arena (the main heap, grown by brk), no mmap and no trimming, the freed memory is
reused by the next call: no faults after the first steps, 4.2 s per step (benchmarks/bench_train.py).
The price is that the process keeps its peak heap until it exits, which a training or evaluation
process does anyway.
"""

import ctypes
import os
import sys

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never give memory back
OPT_OUT = "OIE_JAX_DEFAULT_MALLOC"  # set to 1 to keep glibc's defaults


def keep_freed_memory() -> bool:
    """Apply the settings to this process (glibc on Linux; elsewhere nothing). Call it before JAX starts
    its threads (before the first computation): threads that already have an arena keep it. Returns
    whether the settings are in force."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(parameter, value) == 1 for parameter, value in SETTINGS)
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
