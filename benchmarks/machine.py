"""What every benchmark prints first: the machine it ran on (CPU model, cores, memory, JAX's devices)
and what that machine can do (a jitted float32 matmul's FLOP/s, a jitted reduction's read bandwidth),
so that figures from two machines can be told apart. `smoke` measures on small arrays (a check that the
benchmark runs, not a figure to quote)."""

import functools
import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def last_level_cache() -> str | None:
    """The size of the CPU's largest cache as the kernel reports it ("480 MiB L3"): arrays that fit in it
    are read faster than the read bandwidth below, which is measured past it."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    try:
        level, size = max((int((c / "level").read_text()), (c / "size").read_text().strip()) for c in caches)
    except (OSError, ValueError):  # no such files (not Linux), or an unexpected format
        return None
    kib = int(size.rstrip("K")) if size.endswith("K") else None
    return f"{kib / 1024:,.0f} MiB L{level}" if kib else f"{size} L{level}"


@functools.cache  # measured once per process: describe() and a benchmark's own figures share it
def read_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes/s of a jitted sum over a float32 array much larger than the caches (the best of `repeats`)."""
    import jax
    import jax.numpy as jnp

    data = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(data).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total(data).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def describe(smoke: bool = False) -> str:
    import jax

    from oie_jax.train.throughput import matmul_peak_flops

    memory = memory_gib()
    devices = jax.devices()
    peak = matmul_peak_flops(256 if smoke else 2048, 2 if smoke else 10)
    bandwidth = read_bandwidth(16 if smoke else 1024, 2 if smoke else 5)
    return (f"machine: {cpu_model()}, {os.cpu_count()} logical cores"
            + (f", {memory:.0f} GiB" if memory else "")
            + (f", {cache} cache" if (cache := last_level_cache()) else "")
            + f"; JAX {jax.__version__} on {len(devices)} {devices[0].platform} device(s); jitted float32 matmul "
            f"{peak / 1e9:,.0f} GFLOP/s, read bandwidth {bandwidth / 1e9:,.1f} GB/s"
            + (" (smoke sizes)" if smoke else ""))


def add_smoke_argument(parser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="one round at the smallest sizes, random tiny models: checks that the benchmark runs "
                             "(the tests run it); its numbers mean nothing")
