"""OIELLM 8B: Llama-3-8B fine-tuned on MMM with the paper's recipe (`paper_recipe`) on a TPU v4-32 slice
(16 chips, 32 GiB HBM each), FSDP over the 16 chips.

Import the weights once (oie-jax convert hf-to-jax Meta-Llama-3-8B checkpoints/llama3-8b), check the
plan with --dry-run, then run the same command on every host of the slice:
    oie-jax train --config configs/llama3_8b_mmm_tpu.py --workdir gs://BUCKET/runs/oiellm-8b --distributed
For several slices (multi-slice), set mesh.dcn_shape = (SLICES, 1, 1): data parallel across slices.
"""

from oie_jax.train.defaults import base_config, paper_recipe


def get_config():
    c = paper_recipe(base_config(), init="checkpoints/llama3-8b", preset="llama3-8b")
    c.model.remat = "full"
    c.mesh.platform = "tpu"  # attention "auto" -> splash; --dry-run plans for it
    c.mesh.shape = (1, -1, 1)
    c.mesh.devices = 16
    c.mesh.device_memory_gb = 32.0
    return c
