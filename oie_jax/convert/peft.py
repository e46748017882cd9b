"""LoRA adapters in the layout of Hugging Face `peft`: `adapter_config.json` and
`adapter_model.safetensors`, loaded with `PeftModel.from_pretrained(base, DIR)` on the base model in
Hugging Face form (`oie-jax convert jax-to-hf` of the run's `model.init`).

peft keeps `lora_A.weight` (rank, in_features) and `lora_B.weight` (out_features, rank) per projection,
and scales by lora_alpha / r as we do; our (in..., rank) and (rank, out...) flatten in the order the
projection weights do (`convert/layout.py`), so a transpose is all it takes.
"""

import json

import numpy as np
from etils import epath

from oie_jax.convert.tensors import NUMPY_DTYPES
from oie_jax.files import staged
from oie_jax.models.config import LlamaConfig

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MODULES = {"q": ("attn", "self_attn.q_proj"), "k": ("attn", "self_attn.k_proj"), "v": ("attn", "self_attn.v_proj"),
           "o": ("attn", "self_attn.o_proj"), "gate": ("mlp", "mlp.gate_proj"), "up": ("mlp", "mlp.up_proj"),
           "down": ("mlp", "mlp.down_proj")}


def adapter_tensors(cfg: LlamaConfig, adapters: dict, dtype: str | None = None) -> dict[str, np.ndarray]:
    """peft's tensor names and arrays of a LoRA model's adapters (host arrays stacked over layers)."""
    np_dtype = NUMPY_DTYPES[dtype or cfg.param_dtype]
    rank, tensors = cfg.lora.rank, {}
    for target in cfg.lora.targets:
        module, hf_module = MODULES[target]
        a = np.asarray(adapters["layers"][module][target + "_lora_a"])
        b = np.asarray(adapters["layers"][module][target + "_lora_b"])
        for layer in range(cfg.num_layers):
            prefix = f"base_model.model.model.layers.{layer}.{hf_module}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[layer].reshape(-1, rank).T, np_dtype)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[layer].reshape(rank, -1).T, np_dtype)
    return tensors


def target_modules(targets) -> list[str]:
    """peft's `target_modules` of our adapter targets."""
    return sorted(MODULES[t][1].split(".")[-1] for t in targets)


def adapter_config(cfg: LlamaConfig, base: str) -> dict:
    lora = cfg.lora
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": lora.rank,
            "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none", "fan_in_fan_out": False,
            "target_modules": target_modules(lora.targets), "use_rslora": False, "inference_mode": True,
            "modules_to_save": None}


def write(out: epath.Path, cfg: LlamaConfig, adapters: dict, base: str = "", dtype: str | None = None) -> None:
    """The adapters of `cfg.lora` into the empty directory `out`; `base` names the base model for peft."""
    from safetensors.numpy import save_file

    with staged(out) as local:
        save_file(adapter_tensors(cfg, adapters, dtype), str(local / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(cfg, base), indent=2) + "\n")
