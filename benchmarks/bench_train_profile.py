"""Where a train step's time goes, ours against transformers + torch.optim.AdamW: the step of
bench_train.py (SmolLM2-135M float32, 4 x 256 tokens) profiled op by op on each side, after a warm-up,
over --steps steps. Ours through `jax.profiler` with XLA's per-thunk trace events
(`--xla_cpu_enable_xprof_traceme`), torch's through `torch.profiler` (each op's self time). Ops are put
in classes by their names (XLA's fusion names say what they fuse: `dot`, `exponential`, `reduce`, ...),
and a table prints milliseconds per step of each class on both sides, then the step times and last
`ratio=` (torch's profiled step time / ours: above 1 we are faster).

    .venv/bin/python benchmarks/bench_train_profile.py [--steps 2]
"""

import argparse
import collections
import gzip
import json
import os
import re
import tempfile
import time
from pathlib import Path

# XLA's CPU thunks emit trace events only with this flag, read when JAX starts.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"

import numpy as np  # noqa: E402
from bench_train import BATCH, SEQ_LEN, ours, torch_train_step, transformers_model  # noqa: E402
from machine import add_smoke_argument, describe  # noqa: E402  (benchmarks/ is on sys.path as a script)

# (class, pattern over an op's name), first match wins; XLA's fusions are named after the ops they fuse.
CLASSES = (
    ("matmuls", r"dot|ynn|gemm|\bmm\b|bmm|addmm|matmul|linear|scaled_dot_product"),
    ("softmax, exp, log (attention, loss)", r"exp|log|softmax|nll|cross_entropy"),
    ("optimizer update", r"_foreach|adam|optim"),
    ("layer slices (the scan's dynamic-slice, -update-slice)", r"dynamic"),
    ("copies, transposes, concatenations, gathers", r"copy|transpose|concat|\bcat\b|clone|contiguous|permute|"
                                                     r"expand|slice|pad|select|index|gather|scatter"),
    ("broadcasts alone (zeros, fills)", r"^(wrapped_)?broadcast$|fill|zero"),
    ("reductions (norms, sums)", r"reduce|sum|mean|norm|rsqrt|pow"),
    ("other elementwise", r"."),
)
XLA_SCAFFOLDING = re.compile(r"^(\$|end: |Thunk|ThreadpoolListener|SlinkyThreadPool|H2D|D2H|DevicePut|PjitFunction|"
                             r"ParseArguments|TfrtCpu|PjRt)")


def op_class(name: str) -> str:
    lowered = name.lower()
    return next(label for label, pattern in CLASSES if re.search(pattern, lowered))


def profile_ours(step, steps: int) -> tuple[dict, float]:
    """(op class -> seconds per step, wall seconds per step) of our jitted step."""
    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
        jax.profiler.stop_trace()
        (trace,) = Path(trace_dir).rglob("*.trace.json.gz")
        events = json.load(gzip.open(trace))["traceEvents"]
    seconds: dict = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not XLA_SCAFFOLDING.match(event["name"]):
            seconds[op_class(re.sub(r"[._]\d+$", "", event["name"]))] += event["dur"] / 1e6 / steps
    return seconds, wall


def profile_torch(step, steps: int) -> tuple[dict, float]:
    """(op class -> seconds per step, wall seconds per step) of the torch step, by each op's self time."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    seconds: dict = collections.Counter()
    for op in profiler.key_averages():
        if op.key.startswith("aten::") or "Optimizer" in op.key:
            seconds[op_class(op.key.removeprefix("aten::"))] += op.self_cpu_time_total / 1e6 / steps
    return seconds, wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps of each side (after a warm-up)")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)

    from oie_jax.models.config import preset

    cfg = preset("tiny" if args.smoke else "smollm2-135m")
    steps = 1 if args.smoke else args.steps
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (BATCH, SEQ_LEN)).astype(np.int32)
    sides = {"oie-jax": ours(cfg, tokens, loss_chunk=0), "transformers": torch_train_step(transformers_model(cfg),
                                                                                           tokens)[0]}
    for step in sides.values():
        step()  # compile / warm up
    ours_ops, ours_wall = profile_ours(sides["oie-jax"], steps)
    torch_ops, torch_wall = profile_torch(sides["transformers"], steps)
    width = max(len(label) for label, _ in CLASSES)
    print(f"{'ms per step':<{width}}  {'oie-jax':>8}  {'torch':>8}")
    for label, _ in CLASSES:
        print(f"{label:<{width}}  {ours_ops[label] * 1e3:8.0f}  {torch_ops[label] * 1e3:8.0f}")
    print(f"{'all ops (threads added up)':<{width}}  {sum(ours_ops.values()) * 1e3:8.0f}  "
          f"{sum(torch_ops.values()) * 1e3:8.0f}")
    print(f"{'step (wall, profiled)':<{width}}  {ours_wall * 1e3:8.0f}  {torch_wall * 1e3:8.0f}")
    print(f"ratio={torch_wall / ours_wall:.2f}")


if __name__ == "__main__":
    main()
