"""Scoring speed: the jitted metrics against the plain-Python reference, on 100,000 examples.

Examples: the 210 sample-corpus records repeated, each with an output that is the gold itself, a
wrong label, a lost or duplicated item, malformed items, garbage or nothing. Times, in one run:
parse + encode to arrays (host), the jitted counting (compile once, then the best of `--repeats`),
and the reference's counting (tests/metrics_reference.py: Counters over the same parsed, normalized
examples). Prints `ratio=` (reference counting / jitted counting); the target is >= 20, and parse +
encode + the first jitted call (compile included) should stay under 10 s.

    .venv/bin/python benchmarks/bench_metrics.py [--examples 100000] [--repeats 5]
"""

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path

from machine import add_smoke_argument, describe  # benchmarks/ is on sys.path as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the reference implementation lives in the tests


def make_outputs(golds, seed: int) -> list[str]:
    from oie_jax.data.format import render

    rng = random.Random(seed)
    outputs = []
    for gold in golds:
        roll = rng.random()
        if roll < 0.15:
            gold = dataclasses.replace(gold, label="Other")
        elif roll < 0.3 and gold.items:
            gold = dataclasses.replace(gold, items=gold.items[1:])
        elif roll < 0.4 and gold.items:
            gold = dataclasses.replace(gold, items=gold.items + gold.items[:1])
        _, output = render(gold)
        if 0.4 <= roll < 0.5:
            output = output.removesuffix(":") if gold.task != "NER" else output.replace("/:", "/", 1)  # malformed
        elif 0.5 <= roll < 0.55:
            output = "".join(rng.choice("abc/:; ") for _ in range(rng.randint(0, 30)))
        elif 0.55 <= roll < 0.6:
            output = ""
        outputs.append(output)
    return outputs


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)
    if args.smoke:
        args.examples, args.repeats = 2_000, 1

    import jax

    from oie_jax.data.sample import load_sample
    from oie_jax.eval.encode import encode, pad_rows
    from oie_jax.eval.metrics import count_and_score, padded_rows
    from tests.metrics_reference import count, prepare, summarize

    sample = load_sample()
    golds = [sample[i % len(sample)] for i in range(args.examples)]
    outputs = make_outputs(golds, seed=0)

    (encoded, groups), encode_seconds = timed(encode, golds, outputs)
    encoded = pad_rows(encoded, padded_rows(len(golds), None), groups.padding_group)
    on_device = jax.device_put(encoded)
    language = groups.language_index()

    def jitted():
        out = count_and_score(on_device, language, num_groups=groups.padded, num_languages=groups.padded_languages)
        return jax.block_until_ready(out)

    _, first_seconds = timed(jitted)
    count_seconds = min(timed(jitted)[1] for _ in range(args.repeats))

    prepared, prepare_seconds = timed(prepare, golds, outputs)
    reference_seconds = min(timed(lambda: summarize(count(prepared)))[1] for _ in range(max(1, args.repeats // 2)))

    item_width = encoded.gold_items.shape[1], encoded.pred_items.shape[1]
    print(f"examples: {len(golds):,} ({len(groups.keys)} groups; item arrays {item_width[0]} gold / {item_width[1]} "
          f"predicted columns; {len(encoded.group):,} rows after padding); devices: {jax.devices()[0].platform} "
          f"x{jax.device_count()}")
    print(f"parse + encode (host): {encode_seconds:.2f} s ({len(golds) / encode_seconds:,.0f} examples/s)")
    print(f"jitted counting: first call {first_seconds:.3f} s (compile included), then {count_seconds * 1e3:.1f} ms")
    print(f"score total (parse + encode + first jitted call): {encode_seconds + first_seconds:.2f} s (target <= 10 s)")
    print(f"reference: parse + normalize {prepare_seconds:.2f} s; counting {reference_seconds:.3f} s")
    print(f"ratio={reference_seconds / count_seconds:.1f}")


if __name__ == "__main__":
    main()
