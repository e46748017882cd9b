"""OIELLM 8B (paper recipe: 3 epochs, learning rate 1e-5, bfloat16) on one host with 8 GPUs of 80 GB
(A100/H100). float32 master weights and moments as in the TPU config; FSDP over the 8 GPUs.

    oie-jax train --config configs/llama3_8b_mmm_gpu.py --workdir runs/oiellm-8b [--dry-run]
"""

from oie_jax.train.defaults import base_config


def get_config():
    c = base_config()
    c.model.init = "checkpoints/llama3-8b"
    c.model.preset = "llama3-8b"
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = "dots_no_batch"  # keep the matmul outputs, recompute the cheap element-wise ops
    c.data.train = "data/mmm/Train_*.json"
    c.data.dev = "data/mmm/test_*.json"
    c.data.source = "mmm"
    c.data.seq_len = 2048
    c.data.batch_size = 64
    c.train.epochs = 3
    c.train.lr = 1e-5
    c.train.micro_batches = 4  # 2 rows per GPU per micro-batch
    c.mesh.shape = (1, 8, 1)
    c.mesh.devices = 8
    c.mesh.device_memory_gb = 80.0
    c.checkpoint.every = 500
    c.eval.every = 500
    return c
