"""oie-jax: OIELLM information extraction in JAX/Flax, from a laptop CPU to TPU pods."""


def __getattr__(name):
    # `oie_jax.extract(...)` without importing JAX for every `import oie_jax` (the CLI starts faster).
    if name == "extract":
        from oie_jax.infer.extract import extract

        return extract
    raise AttributeError(f"module 'oie_jax' has no attribute {name!r}")
