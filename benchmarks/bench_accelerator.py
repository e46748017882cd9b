"""Train-step throughput and MFU of a real architecture on this host's first accelerator, with each
attention kernel in turn, in one process run: the einsum reference (`xla`) against the fused kernel of
the platform (`cudnn` on GPU, `splash` on TPU). Mixed precision as in the 8B recipes (float32 weights
and Adam moments, bfloat16 matmuls), the loss in chunks, rows of two packed segments each. Prints
per kernel the median step time, tokens/s and MFU, and last `speedup=` (fused / xla tokens/s).

    python benchmarks/bench_accelerator.py [--preset llama3.2-1b] [--seq-len 2048] [--batch 8]

On a CPU it runs the reference alone (a check of the script, not a measurement worth reporting).
"""

import argparse
import statistics
import time

import numpy as np
from machine import add_smoke_argument, describe  # benchmarks/ is on sys.path as a script

FUSED = {"gpu": "cudnn", "tpu": "splash"}


def packed_batch(rows: int, seq_len: int, vocab: int) -> dict:
    """Random tokens in rows of two segments (a 60/40 split), positions restarting per segment."""
    rng = np.random.default_rng(0)
    cut = seq_len * 3 // 5
    segments = np.where(np.arange(seq_len) < cut, 1, 2).astype(np.int32)
    positions = np.where(segments == 1, np.arange(seq_len), np.arange(seq_len) - cut).astype(np.int32)
    return {"tokens": rng.integers(0, vocab, (rows, seq_len), dtype=np.int32),
            "loss_mask": np.ones((rows, seq_len), np.int32),
            "segment_ids": np.broadcast_to(segments, (rows, seq_len)).copy(),
            "positions": np.broadcast_to(positions, (rows, seq_len)).copy()}


def step_seconds(cfg, batch: dict, loss_chunk: int, steps: int) -> float:
    """Median seconds of one of our train steps, after two warm-up steps (compilation)."""
    import jax
    from flax import nnx

    from oie_jax.models.llama import Llama
    from oie_jax.train.optimizer import adamw, learning_rate_schedule
    from oie_jax.train.step import init_state, make_train_step

    optimizer = adamw(learning_rate_schedule(1e-5, 100, 0, decay="constant"), weight_decay=0.0, clip_norm=1.0)
    init = jax.jit(lambda: init_state(nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0)))), optimizer))
    state = init()
    batch = jax.device_put(batch)
    step = jax.jit(make_train_step(cfg, optimizer, loss_chunk=loss_chunk), donate_argnums=0)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - start)
    del state
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama3.2-1b", help="architecture (oie_jax.models.config.PRESETS)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--loss-chunk", type=int, default=512, help="train.loss_chunk (0 = whole rows)")
    parser.add_argument("--remat", default="dots_no_batch", help="model.remat")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per kernel")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)
    if args.smoke:
        args.preset, args.seq_len, args.batch, args.loss_chunk, args.steps = "tiny", 64, 2, 0, 1

    import jax

    from oie_jax.models.config import preset
    from oie_jax.train.throughput import peak_flops, train_flops_per_token

    device = jax.devices()[0]
    kernels = ["xla"] + ([FUSED[device.platform]] if device.platform in FUSED else [])
    peak, peak_source = peak_flops(device)
    print(f"{device.device_kind} ({device.platform}), peak {peak / 1e12:.3g} TFLOP/s ({peak_source}); {args.preset}, "
          f"{args.batch} x {args.seq_len} tokens per step, remat {args.remat}, loss_chunk {args.loss_chunk}",
          flush=True)
    speeds = {}
    for kernel in kernels:
        cfg = preset(args.preset, param_dtype="float32", dtype="bfloat16", attention=kernel, remat=args.remat)
        batch = packed_batch(args.batch, args.seq_len, cfg.vocab_size)
        seconds = step_seconds(cfg, batch, args.loss_chunk, args.steps)
        speeds[kernel] = args.batch * args.seq_len / seconds
        mfu = speeds[kernel] * train_flops_per_token(cfg, args.seq_len) / peak
        print(f"attention {kernel:6s}: {seconds * 1e3:8.1f} ms/step, {speeds[kernel]:10,.0f} tokens/s, "
              f"MFU {mfu:.1%}", flush=True)
    if len(kernels) == 2:
        print(f"speedup={speeds[kernels[1]] / speeds['xla']:.2f}")


if __name__ == "__main__":
    main()
