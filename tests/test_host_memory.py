"""The host process's memory as oie_jax/host_memory.py reports it."""

import numpy as np

from oie_jax import host_memory


def test_resident_bytes_counts_what_the_process_holds():
    before = host_memory.resident_bytes()
    held = np.ones(50_000_000)  # 400 MB, written
    during = host_memory.resident_bytes()
    assert during["now"] - before["now"] > 0.9 * held.nbytes
    assert during["peak"] >= during["now"]
