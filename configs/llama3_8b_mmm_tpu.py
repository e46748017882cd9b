"""OIELLM 8B: Llama-3-8B fully fine-tuned on MMM with the paper's recipe (3 epochs, learning rate 1e-5,
bfloat16) on a TPU v4-32 slice (16 chips, 32 GiB HBM each).

Weights stay float32 (master copy and Adam moments): an update of 1e-5 relative to a weight is below
bfloat16's resolution (2^-8) and would round away; matmuls run in bfloat16.
Launch on every host of the slice (see launch/): oie-jax train --config configs/llama3_8b_mmm_tpu.py
--workdir gs://BUCKET/runs/oiellm-8b. Check the plan first with --dry-run. For several slices
(multi-slice), set mesh.dcn_shape = (SLICES, 1, 1): data parallel across slices, FSDP inside each.
"""

from oie_jax.train.defaults import base_config


def get_config():
    c = base_config()
    c.model.init = "checkpoints/llama3-8b"  # oie-jax convert hf-to-jax Meta-Llama-3-8B checkpoints/llama3-8b
    c.model.preset = "llama3-8b"
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.data.train = "data/mmm/Train_*.json"
    c.data.dev = "data/mmm/test_*.json"
    c.data.source = "mmm"
    c.data.seq_len = 2048
    c.data.batch_size = 64
    c.train.epochs = 3
    c.train.lr = 1e-5
    c.train.weight_decay = 0.0
    c.mesh.shape = (1, -1, 1)  # FSDP over the 16 chips
    c.mesh.devices = 16
    c.mesh.device_memory_gb = 32.0
    c.checkpoint.every = 500
    c.checkpoint.keep = 2
    c.eval.every = 500
    return c
