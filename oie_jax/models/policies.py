"""The dtype and rematerialisation policies every model family's config accepts (the LLaMA, the vision
encoders, the grounding head). No JAX here: the command line offers them as choices without importing it;
`layers.CHECKPOINT_POLICIES` says what each remat policy keeps."""

from oie_jax.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Generating commands' --dtype: weights are loaded in it too, since a decoding step reads every weight once
# and a float32 weight cast to bfloat16 at each step would be read in full anyway.
GENERATION_DTYPE_HELP = ("weights and compute dtype (default: the model's); bfloat16 halves the weights' memory "
                         "(on a CPU: F1 and speed in docs/architecture.md)")


def generation_overrides(dtype: str | None) -> dict:
    """A model config's fields for a generating command's --dtype."""
    return {"param_dtype": dtype, "dtype": dtype} if dtype else {}


def check_policies(cfg) -> None:
    """A config's `param_dtype`, `dtype` and `remat` (where it has one), each one of the known names, or a
    one-line error."""
    for name in ("param_dtype", "dtype"):
        if getattr(cfg, name) not in DTYPES:
            raise UserError(f"{name}={getattr(cfg, name)!r} is not one of {DTYPES}")
    if getattr(cfg, "remat", "none") not in REMAT_POLICIES:
        raise UserError(f"remat={cfg.remat!r} is not one of {REMAT_POLICIES}")
