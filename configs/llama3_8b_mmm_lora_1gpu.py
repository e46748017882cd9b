"""OIELLM 8B on MMM with LoRA on a single 80 GB GPU (A100/H100), where full fine-tuning does not fit:
the base frozen in bfloat16 (16 GB), adapters of rank 16 on every projection (42M trained parameters)
with their Adam moments in float32, whole-block rematerialisation, 8 micro-batches of 2 rows.

    oie-jax train --config configs/llama3_8b_mmm_lora_1gpu.py --workdir runs/oiellm-8b-lora [--dry-run]
    oie-jax export runs/oiellm-8b-lora runs/oiellm-8b-lora-hf --format hf      # merged into the base
    oie-jax export runs/oiellm-8b-lora runs/oiellm-8b-lora-peft --format peft  # the adapters alone
"""

from oie_jax.train.defaults import base_config, paper_recipe


def get_config():
    c = paper_recipe(base_config(), init="checkpoints/llama3-8b", preset="llama3-8b")
    c.train.lora.rank = 16
    c.train.lora.alpha = 32.0
    c.train.lora.dropout = 0.05
    c.train.lora.base_dtype = "bfloat16"  # frozen: no update to round away, so bfloat16 loses nothing
    c.train.lr = 2e-4  # adapters start at zero and take larger steps than full fine-tuning's 1e-5
    c.train.warmup_fraction = 0.03
    c.data.batch_size = 16
    c.train.micro_batches = 8
    c.model.remat = "full"
    c.mesh.platform = "gpu"  # attention "auto" -> cudnn
    c.mesh.shape = (1, 1, 1)
    c.mesh.devices = 1
    c.mesh.device_memory_gb = 80.0
    return c
