"""oie-jax: OIELLM information extraction in JAX/Flax, from a laptop CPU to TPU pods."""

import os

# Bucket paths (gs://) go through etils.epath's fsspec backend (gcsfs): the one rehearsed against a GCS
# server on 127.0.0.1 (tests/test_bucket_workdir.py). Left to itself, epath takes TensorFlow's GCS client
# because TensorFlow is installed, and that client's endpoint cannot be pointed anywhere but Google's.
# EPATH_USE_TF=1 in the environment chooses it all the same.
os.environ.setdefault("EPATH_USE_TF", "false")


def __getattr__(name):
    # `oie_jax.extract(...)` without importing JAX for every `import oie_jax` (the CLI starts faster).
    if name == "extract":
        from oie_jax.infer.extract import extract

        return extract
    raise AttributeError(f"module 'oie_jax' has no attribute {name!r}")
