"""The malloc settings of oie_jax/host_memory.py: a jitted computation with large temporaries stops
faulting in fresh pages at every call (the reason for them), and the opt-out keeps glibc's defaults."""

import os
import subprocess
import sys
import textwrap

import pytest

FAULTS_PER_CALL = textwrap.dedent("""
    import resource
    from oie_jax.host_memory import keep_freed_memory
    applied = keep_freed_memory()
    import jax, jax.numpy as jnp
    x = jnp.ones((2048, 2048))
    f = jax.jit(lambda x: ((x * 2.0) @ (x + 1.0)).sum())
    for _ in range(3):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        f(x).block_until_ready()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
""")


def faults_per_call(**env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env}, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    applied, kept = faults_per_call()
    opted_out, default = faults_per_call(OIE_JAX_DEFAULT_MALLOC="1")
    assert applied and not opted_out
    assert default > 4096  # glibc maps at least one 16 MB buffer afresh per call
    assert kept < 100, (kept, default)
