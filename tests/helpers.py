"""Builders shared by the tests: small random Hugging Face checkpoints."""

import json
import os
from pathlib import Path

import numpy as np

# The suite compiles hundreds of small programs and runs each a few times, so it asks XLA for quick compilation:
# LLVM's optimization level 1 instead of the default, and XLA's older loop emitters instead of its fusion emitters
# (which fuse a few more operations). A tiny model's train step compiles in 1.0 s instead of 2.1 and runs as fast;
# SmolLM2's runs ~20% slower, and its generation program (30 unrolled layers) compiles in 7.3 s instead of 4.4 with
# the fusion emitters: the few tests of the real model pay that out of what the rest save, and share their
# programs (the same batch, prompt and room buckets) where they can. test_constrain.py (mostly the real model)
# took 129 s of CPU from an empty cache with either emitters and 156 s at the default optimization level.
FAST_COMPILE = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
# The user's own flags, read before tests/conftest.py replaces XLA_FLAGS (it imports this module first).
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")


def xla_flags(devices: int) -> str:
    """XLA_FLAGS of a test process or a command a test starts, with its number of virtual CPU devices:
    compiling quickly, the user's own flags after ours (they win)."""
    return f"{FAST_COMPILE} {USER_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"


def llama31_hf_config(tie: bool = False, **changes) -> dict:
    """A tiny LLaMA-3.1-shaped config: 4:1 grouped-query heads, llama3 rope scaling with an original
    context (64) shorter than the test sequences; with head_dim 16 its frequencies fall in all three
    bands of the scaling (kept, interpolated, divided)."""
    config = dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=320, hidden_size=64,
        intermediate_size=176, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=256,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64),
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=[2, 3], pad_token_id=0, initializer_range=0.2,
        torch_dtype="float32",
    )
    config.update(changes)
    return config


def save_random_hf_llama(out: Path, config: dict, seed: int = 0, dtype: str = "float32", **save_kwargs):
    """A random LlamaForCausalLM saved with `save_pretrained` (safetensors); returns the torch model.

    Norm weights are randomised too so that a misplaced norm cannot hide behind all-ones."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(out), **save_kwargs)
    return model


def randomize(model, seed: int) -> None:
    """Every parameter of a torch model drawn anew, biases and norms included, so that none of them goes
    unchecked."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(1 + 0.1 * noise if is_norm_scale else 0.02 * noise if p.ndim > 1 else 0.1 * noise)


def random_tokens(shape, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(4, vocab, shape).astype(np.int32)


def save_word_tokenizer(directory: Path, vocab_size: int, eos_token: str = "t2") -> None:
    """A tokenizer.json whose words `t0` ... `t{vocab_size - 1}` are token ids 0 ... vocab_size - 1 (t1 is
    BOS), for command-line runs of random models: "t5 t17" encodes to [1, 5, 17]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="t1 $A", special_tokens=[("t1", 1)])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "t1", "eos_token": eos_token}))


def save_tiny_smollm2(smollm2_hf_dir: Path, hf_dir: Path, out: Path, seed: int) -> Path:
    """A random two-layer LLaMA that reads SmolLM2's tokenizer and chat template (real prompts, fast answers;
    it never ends an answer by itself), as an oie-jax model directory `out`."""
    from oie_jax.convert import hf_to_jax

    save_random_hf_llama(hf_dir, llama31_hf_config(vocab_size=49152, num_hidden_layers=2, eos_token_id=2,
                                                   bos_token_id=1, max_position_embeddings=4096), seed=seed)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (smollm2_hf_dir / name).is_file():
            (hf_dir / name).write_bytes((smollm2_hf_dir / name).read_bytes())
    hf_to_jax.convert(hf_dir, out)
    return out
