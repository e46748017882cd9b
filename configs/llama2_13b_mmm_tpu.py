"""OIELLM 13B: Llama-2-13B (SentencePiece tokenizer) fine-tuned on MMM with the paper's recipe
(`paper_recipe`) on a TPU v4-64 slice (32 chips, 32 GiB HBM each): FSDP 16 x tensor 2.

    oie-jax convert hf-to-jax Llama-2-13b-hf checkpoints/llama2-13b
    oie-jax train --config configs/llama2_13b_mmm_tpu.py --workdir gs://BUCKET/runs/oiellm-13b --distributed
"""

from oie_jax.train.defaults import base_config, paper_recipe


def get_config():
    c = paper_recipe(base_config(), init="checkpoints/llama2-13b", preset="llama2-13b")
    c.model.remat = "full"
    c.mesh.platform = "tpu"  # attention "auto" -> splash; --dry-run plans for it
    c.mesh.shape = (1, 16, 2)  # the 40 heads split in two
    c.mesh.devices = 32
    c.mesh.device_memory_gb = 32.0
    return c
