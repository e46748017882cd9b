"""Input pipeline speed against the train step it feeds, in one process run.

Producer: our pipeline (SmolLM2 tokenizer, stockmark corpus, packed rows of 256 tokens, batch 4),
counting tokenization at startup and every delivered batch. Consumer: the `transformers` SmolLM2-135M
train step (float32, AdamW, batch 4 x 256) on the same CPU, the faster of the two train steps that
`bench_train.py` compares, so the ratio is the conservative one. Prints tokens/s of both, the
one-time tokenization cost, and `ratio=` (pipeline / train step); the target is >= 20.

    .venv/bin/python benchmarks/bench_input.py [--epochs 3] [--train-steps 4]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_train import BATCH, SEQ_LEN, transformers_peer  # benchmarks/ is on sys.path as a script
from machine import add_smoke_argument, describe

ROOT = Path(__file__).resolve().parents[1]
STOCKMARK = ROOT.parent / "shared" / "data" / "stockmark-ner" / "ner_train.json"
SAMPLE = ROOT / "oie_jax" / "data" / "sample" / "train.jsonl"


def smollm2_tokenizer_dir() -> Path:
    import transformers

    from oie_jax.assets import smollm2_gguf

    gguf = smollm2_gguf()
    out = Path(tempfile.mkdtemp(prefix="smollm2-tokenizer-"))
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out))
    return out


def pipeline_tokens_per_second(records, tokenizer, epochs: int) -> tuple[float, float, int]:
    """Real (non-padding) tokens delivered as global jax.Arrays per second, startup included."""
    import jax

    from oie_jax.data.pipeline import Pipeline, PipelineConfig, to_global

    sharding = jax.sharding.NamedSharding(jax.make_mesh((1,), ("data",)), jax.sharding.PartitionSpec("data"))
    start = time.perf_counter()
    pipeline = Pipeline(records, tokenizer, PipelineConfig(seq_len=SEQ_LEN, batch_size=BATCH, seed=0))
    startup = time.perf_counter() - start
    delivered, iterator = 0, iter(pipeline)
    while pipeline.epoch < epochs:
        batch = to_global(next(iterator), sharding)
        delivered += int((batch["segment_ids"] > 0).sum())
    elapsed = time.perf_counter() - start
    return delivered / elapsed, startup, sum(len(s.tokens) for s in pipeline.sequences)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=4, help="timed train steps (the median counts)")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)
    from oie_jax.data.sources import load, stockmark
    from oie_jax.data.tokenizer import ByteTokenizer, load_tokenizer
    from oie_jax.models.config import preset

    if args.smoke:  # the bundled sample, bytes as tokens, a tiny model
        from oie_jax.data.sources.registry import load_source

        records = load_source([str(SAMPLE)])[1].records
        tokenizer, cfg, args.epochs, args.train_steps = ByteTokenizer(), preset("tiny"), 1, 1
    else:
        if not STOCKMARK.is_file():
            sys.exit(f"{STOCKMARK} is absent: this benchmark reads the stockmark corpus from ../shared/data")
        records = load([str(STOCKMARK)], stockmark.read, (".json",)).records
        tokenizer, cfg = load_tokenizer(smollm2_tokenizer_dir()), preset("smollm2-135m")
    produced, startup, corpus_tokens = pipeline_tokens_per_second(records, tokenizer, args.epochs)

    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (BATCH, SEQ_LEN)).astype(np.int32)
    step = transformers_peer(cfg, tokens)
    step()  # warm-up
    consumed = BATCH * SEQ_LEN / statistics.median(step() for _ in range(args.train_steps))
    print(f"corpus: {len(records):,} records, {corpus_tokens:,} tokens; tokenization + packing at "
          f"startup {startup:.2f} s ({corpus_tokens / startup / 1e6:.2f} M tokens/s)")
    print(f"pipeline: {produced:,.0f} real tokens/s delivered as global arrays (batch {BATCH} x {SEQ_LEN}, "
          f"{args.epochs} epochs, startup included)")
    print(f"train step (transformers {'tiny' if args.smoke else 'SmolLM2-135M'}, float32, AdamW): {consumed:,.0f} "
          "tokens/s")
    print(f"ratio={produced / consumed:.1f}")


if __name__ == "__main__":
    main()
