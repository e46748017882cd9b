"""Full train step (forward, backward, AdamW) of SmolLM2-135M in float32, ours against transformers +
torch.optim.AdamW, in one process run; batch 4 x 256 tokens on the CPU. Prints tokens/s of both, our
MFU against the measured peak of a jitted 2048^3 matmul on the same machine, and last `ratio=`
(ours / transformers); the target is >= 1.0.

    .venv/bin/python benchmarks/bench_train.py [--steps 5]
"""

import argparse
import time

import numpy as np

BATCH, SEQ_LEN = 4, 256


def ours(cfg, tokens: np.ndarray, steps: int) -> float:
    import jax
    from flax import nnx

    from oie_jax.models.llama import Llama
    from oie_jax.train.optimizer import adamw, learning_rate_schedule
    from oie_jax.train.step import init_state, make_train_step

    optimizer = adamw(learning_rate_schedule(1e-5, 100, 0, decay="constant"), weight_decay=0.0, clip_norm=None)
    state = init_state(nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0)))), optimizer)
    batch = {"tokens": tokens, "loss_mask": np.ones_like(tokens), "segment_ids": np.ones_like(tokens),
             "positions": np.broadcast_to(np.arange(SEQ_LEN, dtype=np.int32), tokens.shape)}
    step = jax.jit(make_train_step(cfg, optimizer), donate_argnums=0)
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def transformers_peer(cfg, tokens: np.ndarray, steps: int) -> float:
    import torch
    import transformers

    hf = {k: v for k, v in cfg.to_hf_config().items() if k != "architectures"}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    ids = torch.tensor(tokens, dtype=torch.long)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    from oie_jax.models.config import preset
    from oie_jax.train.throughput import matmul_peak_flops, train_flops_per_token

    cfg = preset("smollm2-135m")
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (BATCH, SEQ_LEN)).astype(np.int32)
    peak = matmul_peak_flops()
    our_rate = ours(cfg, tokens, args.steps)
    their_rate = transformers_peer(cfg, tokens, args.steps)
    flops_per_token = train_flops_per_token(cfg, SEQ_LEN)
    print(f"jitted 2048^3 matmul peak: {peak / 1e9:.0f} GFLOP/s")
    print(f"oie-jax train step: {our_rate:.0f} tokens/s, MFU {our_rate * flops_per_token / peak:.1%}")
    print(f"transformers + torch.optim.AdamW: {their_rate:.0f} tokens/s, "
          f"MFU {their_rate * flops_per_token / peak:.1%}")
    print(f"ratio={our_rate / their_rate:.2f}")


if __name__ == "__main__":
    main()
