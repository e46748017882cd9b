"""Would huge pages for glibc malloc pay on this machine? Fresh processes with and without glibc's
`glibc.malloc.hugetlb=1` tunable (2 MB pages for large allocations where the kernel's transparent huge
pages are in `madvise` mode), started in turns (on/off, then off/on, ...), each timing the config's real
train step (configs/sample_smollm2.py: SmolLM2-135M, 4 x 512, as `make train` runs it) and batch-1 greedy
generation of 32 tokens (SmolLM2-135M, random weights); prints the median seconds of each side and each
speed-up (seconds without / seconds with), last the generation's as `ratio=`.

The `oie-jax` command used to restart its generating commands with the tunable; measured on two hosts of
the same kind it went from 1.39x to 0.49x for generation (docs/architecture.md), so it was removed. Users
who measure a gain here can set the tunable themselves: GLIBC_TUNABLES=glibc.malloc.hugetlb=1 oie-jax ...

    .venv/bin/python benchmarks/bench_huge_pages.py [--rounds 3] [--config.X=Y ...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_memory import CONFIG, compiled_train_step, parse_with_overrides, step_config
from machine import add_smoke_argument, describe  # benchmarks/ is on sys.path as a script

NEW_TOKENS = 32
TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def tunable_applies() -> bool:
    """glibc 2.35+ (the tunable's first release) with the kernel's transparent huge pages in madvise mode."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        return (name == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 35)
                and "[madvise]" in THP_MODE.read_text())
    except (AttributeError, OSError, ValueError):  # not glibc, no confstr, no such file
        return False


def seconds_of(run, repeats: int) -> float:
    """Median seconds of `run` after one untimed call (compilation, first touch of memory)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(overrides: list[str], smoke: bool) -> None:
    """(In a fresh process, started with or without the tunable) prints {"train": s, "generate": s}."""
    import numpy as np

    from oie_jax.infer.generate import generate
    from oie_jax.models.checkpoint import model_from_params
    from oie_jax.models.config import preset
    from oie_jax.train.step import init_params

    config = step_config(CONFIG, overrides)
    train_step, _ = compiled_train_step(config)
    cfg = preset("tiny" if smoke else "smollm2-135m")
    model = model_from_params(cfg, init_params(cfg, 0))
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, 64).tolist()
    repeats = 1 if smoke else 2
    print(json.dumps({"train": seconds_of(train_step, repeats),
                      "generate": seconds_of(lambda: generate(model, [prompt], NEW_TOKENS, eos_ids=()), repeats)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="processes of each side, started in turns")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    add_smoke_argument(parser)
    args, overrides = parse_with_overrides(parser)
    if args.smoke:
        overrides = ["--config.model.preset=tiny", "--config.data.seq_len=64", "--config.data.batch_size=8",
                     "--config.train.loss_chunk=16",
                     *overrides]
    if args.child:
        return measure(overrides, args.smoke)
    print(describe(args.smoke), flush=True)
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    environments = {"on": {**plain, "GLIBC_TUNABLES": TUNABLE}, "off": plain}
    if not tunable_applies():
        print("huge pages for malloc change nothing here (needs glibc >= 2.35 on Linux with transparent huge pages "
              "in madvise mode)")
        print("ratio=1.00")
        return
    results = {"on": [], "off": []}
    for round_ in range(1 if args.smoke else args.rounds):
        for side in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
            out = subprocess.run([sys.executable, __file__, "--child", side, *(["--smoke"] if args.smoke else []),
                                  *overrides], env=environments[side], capture_output=True, text=True,
                                 cwd=Path(__file__).parent)
            if out.returncode:
                raise SystemExit(f"the {side} process failed:\n{out.stderr[-3000:]}")
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}, huge pages {side}: " + ", ".join(
                f"{name} {seconds:.3f} s" for name, seconds in results[side][-1].items()), flush=True)
    ratios = {}
    for name in ("train", "generate"):
        medians = {side: statistics.median(r[name] for r in results[side]) for side in results}
        ratios[name] = medians["off"] / medians["on"]
        print(f"{name}: median {medians['on']:.3f} s with huge pages, {medians['off']:.3f} s without: "
              f"{ratios[name]:.3f}x")
    for name, ratio in ratios.items():
        print(f"{name}: huge pages {'pay' if ratio >= 1.05 else 'do not pay'} here (>= 1.05x to pay)")
    print(f"ratio={ratios['generate']:.2f}")


if __name__ == "__main__":
    main()
