"""OIELLM 13B: Llama-2-13B (SentencePiece tokenizer) fully fine-tuned on MMM with the paper's recipe
(3 epochs, learning rate 1e-5, bfloat16) on a TPU v4-64 slice (32 chips, 32 GiB HBM each).
float32 master weights and moments, bfloat16 matmuls (see llama3_8b_mmm_tpu.py for why).
"""

from oie_jax.train.defaults import base_config


def get_config():
    c = base_config()
    c.model.init = "checkpoints/llama2-13b"  # oie-jax convert hf-to-jax Llama-2-13b-hf checkpoints/llama2-13b
    c.model.preset = "llama2-13b"
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
    c.mesh.shape = (1, 16, 2)  # FSDP 16 x tensor 2 (40 heads split in two)
    c.mesh.devices = 32
    c.mesh.device_memory_gb = 32.0
    c.checkpoint.every = 500
    c.eval.every = 500
    return c
