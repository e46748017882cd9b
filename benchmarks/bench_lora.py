"""LoRA against full fine-tuning on SmolLM2-135M (float32, batch 4 x 256 tokens, AdamW), in one process
run: the optimizer state each keeps, what XLA allocates for our compiled step (arguments and
temporaries), and the step time, ours and the peer's (transformers, and transformers + peft for LoRA),
timed in turns so that a change in the machine's load hits every side alike. Prints a table and last
`ratio=` (our LoRA step time / our full step time: below 1 is faster).

    .venv/bin/python benchmarks/bench_lora.py [--rounds 5] [--rank 16] [--targets q,k,v,o,gate,up,down]
"""

import argparse
import statistics
import time

import numpy as np
from bench_train import BATCH, SEQ_LEN, torch_train_step, transformers_model  # benchmarks/ is on sys.path
from machine import add_smoke_argument, describe

MIB = 2**20


def ours(cfg, tokens: np.ndarray) -> tuple:
    """(a function that runs one train step and returns its seconds, optimizer-state bytes, XLA's bytes)."""
    import jax

    from oie_jax.train.optimizer import adamw, learning_rate_schedule
    from oie_jax.train.step import frozen, init_params, init_state, make_train_step, trainable

    optimizer = adamw(learning_rate_schedule(1e-4, 100, 0, decay="constant"), weight_decay=0.0, clip_norm=None)
    params = init_params(cfg, 0)
    state, base = init_state(trainable(cfg, params), optimizer), frozen(cfg, params)
    batch = jax.device_put({"tokens": tokens, "loss_mask": np.ones_like(tokens), "segment_ids": np.ones_like(tokens),
                            "positions": np.broadcast_to(np.arange(SEQ_LEN, dtype=np.int32), tokens.shape)})
    step = jax.jit(make_train_step(cfg, optimizer), donate_argnums=0)
    analysis = step.lower(state, batch, base).compile().memory_analysis()
    xla = analysis.argument_size_in_bytes + analysis.temp_size_in_bytes
    optimizer_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.opt_state))

    def timed() -> float:
        nonlocal state
        start = time.perf_counter()
        state, metrics = step(state, batch, base)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    return timed, optimizer_bytes, xla


def peer(cfg, tokens: np.ndarray) -> tuple:
    """transformers' train step, with peft's adapters when cfg.lora is set: (timed, optimizer-state bytes)."""
    import torch

    model = transformers_model(cfg.replace(lora=None))
    if cfg.lora is not None:
        import peft

        from oie_jax.convert.peft import target_modules

        model = peft.get_peft_model(model, peft.LoraConfig(
            r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
            target_modules=target_modules(cfg.lora.targets)))
    timed, optimizer = torch_train_step(model, tokens, lr=1e-4)
    timed()  # AdamW creates its moments at the first step
    moments = sum(t.nbytes for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))
    return timed, moments


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps of each side, taken in turns")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="q,k,v,o,gate,up,down", help="comma-separated projections")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)

    from oie_jax.models.config import LoraConfig, preset
    from oie_jax.models.lora import num_adapter_params

    full = preset("tiny" if args.smoke else "smollm2-135m")
    args.rounds = 1 if args.smoke else args.rounds
    adapted = full.replace(lora=LoraConfig(args.rank, 2.0 * args.rank, tuple(args.targets.split(","))))
    tokens = np.random.default_rng(0).integers(0, full.vocab_size, (BATCH, SEQ_LEN)).astype(np.int32)
    sides, memory = {}, {}
    for name, cfg in (("full", full), ("lora", adapted)):
        sides[f"oie-jax {name}"], optimizer_bytes, xla = ours(cfg, tokens)
        memory[f"oie-jax {name}"] = (optimizer_bytes, xla)
        peer_name = "transformers full" if name == "full" else "transformers+peft lora"
        sides[peer_name], moments = peer(cfg, tokens)
        memory[peer_name] = (moments, None)
    times = {name: [] for name in sides}
    for timed in sides.values():
        timed()  # compile / warm up
    for _ in range(args.rounds):
        for name, timed in sides.items():
            times[name].append(timed())

    trained = {"full": full.num_params(), "lora": num_adapter_params(adapted)}
    model = "tiny (smoke)" if args.smoke else "SmolLM2-135M"
    print(f"{model}, batch {BATCH} x {SEQ_LEN} tokens, float32, AdamW; LoRA rank {args.rank} on {args.targets}; "
          f"median of {args.rounds} steps")
    print(f"{'side':<24} {'trained params':>15} {'optimizer state':>16} {'XLA args+temps':>15} {'step s':>8} "
          f"{'tokens/s':>9}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        optimizer_bytes, xla = memory[name]
        kind = "lora" if "lora" in name else "full"
        print(f"{name:<24} {trained[kind]:>15,} {optimizer_bytes / MIB:>12.1f} MiB "
              + (f"{xla / MIB:>11.1f} MiB" if xla else f"{'-':>15}")
              + f" {median:>8.3f} {BATCH * SEQ_LEN / median:>9,.0f}")
    ours_full, ours_lora = (statistics.median(times[f"oie-jax {k}"]) for k in ("full", "lora"))
    peft_ratio = statistics.median(times["transformers+peft lora"]) / ours_lora
    print(f"optimizer state: LoRA {memory['oie-jax lora'][0] / memory['oie-jax full'][0]:.4f} x full; "
          f"our LoRA step is {peft_ratio:.2f}x as fast as transformers+peft")
    print(f"ratio={ours_lora / ours_full:.3f}")


if __name__ == "__main__":
    main()
