"""oie-jax: OIELLM information extraction in JAX/Flax, from a laptop CPU to TPU pods."""

import os
import re
import sys

# Bucket paths (gs://) go through etils.epath's fsspec backend (gcsfs): the one rehearsed against a GCS
# server on 127.0.0.1 (tests/test_bucket_workdir.py). Left to itself, epath takes TensorFlow's GCS client
# because TensorFlow is installed, and that client's endpoint cannot be pointed anywhere but Google's.
# EPATH_USE_TF=1 in the environment chooses it all the same.
os.environ.setdefault("EPATH_USE_TF", "false")

# NumPy asks the kernel to back every large array with huge pages (madvise). Where the kernel then compacts
# memory at the first touch of such an array (transparent_hugepage/defrag = madvise, a common default), a
# fragmented host spends seconds of system time on it: loading SmolLM2 took 1.8-3.0 s instead of 0.55 s and
# `oie-jax eval` 2 s longer (docs/architecture.md, "Huge pages"). A user's own NUMPY_MADVISE_HUGEPAGE wins.
if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"  # read when NumPy is imported: here, and in child processes
    if "numpy" in sys.modules:  # imported before us: told directly
        try:
            from numpy._core.multiarray import _set_madvise_hugepage
        except ImportError:  # NumPy 1.x
            from numpy.core.multiarray import _set_madvise_hugepage
        _set_madvise_hugepage(False)


def _room_for_virtual_cpu_devices() -> None:
    """XLA's CPU client sizes its thread pools to max(cores, devices): with N virtual devices on fewer cores, one
    thread per device, and a collective holds its thread until every device has joined it. A device can wait in
    two collectives at once (one of them inside the layer loop), which leaves another device no thread to join
    with: the run hangs and XLA aborts it after 40 s ("Termination timeout ... only 7 of them arrived"), as LoRA
    training stopped by SIGTERM did in 3 of 4 runs of tests/test_lora.py on 8 devices and 2 cores. Twice as many
    threads as devices leave room: PJRT_NPROC, read when JAX starts its CPU backend, is raised to that (a larger
    one, the user's or inherited, is kept)."""
    forced = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    asked = os.environ.get("JAX_NUM_CPU_DEVICES", "") or (forced[-1] if forced else "")
    devices = int(asked) if asked.isdigit() else 1  # JAX itself reports a malformed value
    if devices > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        given = os.environ.get("PJRT_NPROC", "")
        os.environ["PJRT_NPROC"] = str(max(int(given) if given.isdigit() else 0, cores, 2 * devices))


_room_for_virtual_cpu_devices()


def __getattr__(name):
    # `oie_jax.extract(...)` without importing JAX for every `import oie_jax` (the CLI starts faster).
    if name == "extract":
        from oie_jax.infer.extract import extract

        return extract
    raise AttributeError(f"module 'oie_jax' has no attribute {name!r}")
