"""Full train step (forward, backward, AdamW) of SmolLM2-135M in float32, ours against transformers +
torch.optim.AdamW, in one process run; batch 4 x 256 tokens on the CPU. The two sides are timed in
turns (one step of ours, one of theirs, --rounds times) so that a change in the machine's load hits
both alike; prints the median tokens/s of each, our MFU against the measured peak of a jitted 2048^3
matmul on the same machine, and last `ratio=` (median ours / median transformers); the target is >= 0.95.

    .venv/bin/python benchmarks/bench_train.py [--rounds 7] [--loss-chunk 0] [--remat none]
"""

import argparse
import statistics
import time

import numpy as np
from machine import add_smoke_argument, describe  # benchmarks/ is on sys.path as a script

BATCH, SEQ_LEN = 4, 256


def ours(cfg, tokens: np.ndarray, loss_chunk: int):
    """A function that runs one of our train steps and returns its seconds."""
    import jax
    from flax import nnx

    from oie_jax.models.llama import Llama
    from oie_jax.train.optimizer import adamw, learning_rate_schedule
    from oie_jax.train.step import init_state, make_train_step

    optimizer = adamw(learning_rate_schedule(1e-5, 100, 0, decay="constant"), weight_decay=0.0, clip_norm=None)
    state = init_state(nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0)))), optimizer)
    batch = jax.device_put({"tokens": tokens, "loss_mask": np.ones_like(tokens), "segment_ids": np.ones_like(tokens),
                            "positions": np.broadcast_to(np.arange(SEQ_LEN, dtype=np.int32), tokens.shape)})
    step = jax.jit(make_train_step(cfg, optimizer, loss_chunk=loss_chunk), donate_argnums=0)

    def timed() -> float:
        nonlocal state
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    return timed


def transformers_model(cfg):
    """A random `transformers` LlamaForCausalLM of our config, in training mode."""
    import transformers

    hf = {k: v for k, v in cfg.to_hf_config().items() if k != "architectures"}
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf)).train()


def torch_train_step(model, tokens: np.ndarray, lr: float = 1e-5) -> tuple:
    """(a function that runs one AdamW train step of `model` and returns its seconds, the optimizer).
    Parameters without a gradient (frozen) get no optimizer state."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ids = torch.tensor(tokens, dtype=torch.long)

    def timed() -> float:
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    return timed, optimizer


def transformers_peer(cfg, tokens: np.ndarray):
    return torch_train_step(transformers_model(cfg), tokens)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="timed steps of each side, taken in turns (>= 5)")
    parser.add_argument("--loss-chunk", type=int, default=0, help="our train.loss_chunk (0 = whole rows)")
    parser.add_argument("--remat", default="none", help="our model.remat")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)

    from oie_jax.models.config import preset
    from oie_jax.train.throughput import matmul_peak_flops, train_flops_per_token

    cfg = preset("tiny" if args.smoke else "smollm2-135m").replace(remat=args.remat)
    args.rounds = 1 if args.smoke else args.rounds
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (BATCH, SEQ_LEN)).astype(np.int32)
    peak = matmul_peak_flops(256 if args.smoke else 2048)
    sides = {"oie-jax": ours(cfg, tokens, args.loss_chunk), "transformers": transformers_peer(cfg, tokens)}
    times = {name: [] for name in sides}
    for timed in sides.values():
        timed()  # compile / warm up
    for _ in range(args.rounds):
        for name, timed in sides.items():
            times[name].append(timed())
    rates = {name: BATCH * SEQ_LEN / statistics.median(seconds) for name, seconds in times.items()}
    flops_per_token = train_flops_per_token(cfg, SEQ_LEN)
    print(f"jitted float32 matmul peak (MFU's denominator): {peak / 1e9:.0f} GFLOP/s")
    for name, rate in rates.items():
        spread = ", ".join(f"{s:.2f}" for s in times[name])
        print(f"{name}: median {rate:.0f} tokens/s, MFU {rate * flops_per_token / peak:.1%} (step seconds: {spread})")
    print(f"ratio={rates['oie-jax'] / rates['transformers']:.2f}")


if __name__ == "__main__":
    main()
