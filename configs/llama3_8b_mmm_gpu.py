"""OIELLM 8B with the paper's recipe (`paper_recipe`) on one host with 8 GPUs of 80 GB (A100/H100):
FSDP over the 8 GPUs, 4 micro-batches of 2 rows per GPU.

    oie-jax train --config configs/llama3_8b_mmm_gpu.py --workdir runs/oiellm-8b [--dry-run]
"""

from oie_jax.train.defaults import base_config, paper_recipe


def get_config():
    c = paper_recipe(base_config(), init="checkpoints/llama3-8b", preset="llama3-8b")
    c.model.remat = "dots_no_batch"  # keep the matmul outputs, recompute the cheap element-wise ops
    c.train.micro_batches = 4
    c.mesh.platform = "gpu"  # attention "auto" -> cudnn; --dry-run plans for it
    c.mesh.shape = (1, 8, 1)
    c.mesh.devices = 8
    c.mesh.device_memory_gb = 80.0
    return c
