"""FLOPs of a train step and the peak FLOP/s of a device, for the MFU estimate in the logs."""

import functools
import time

import jax
import jax.numpy as jnp

from oie_jax.models.config import LlamaConfig
from oie_jax.models.lora import num_adapter_params

# Dense bfloat16 peak per device (vendor figures). Matched against jax's `device_kind` by prefix.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def train_flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 per weight for the matmuls (the embedding lookup is not a
    matmul unless it is tied to the output head) plus attention scores and values, 12 L T d, halved
    because a causal token attends to half the sequence on average. With LoRA the frozen weights cost
    4 (no weight gradient) and the adapters 6 per parameter."""
    weights = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    attention = 6 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    if cfg.lora is not None:
        return 4 * weights + 6 * num_adapter_params(cfg) + attention
    return 6 * weights + attention


@functools.cache
def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a jitted float32 n^3 matmul on the default device: the practical peak of a CPU."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    device = device or jax.devices()[0]
    for prefix, flops in sorted(PEAK_FLOPS.items(), key=lambda item: -len(item[0])):
        if device.device_kind.startswith(prefix):
            return flops, f"{prefix} bf16 spec"
    return matmul_peak_flops(), "measured float32 matmul"
