"""`oie-jax generate`: continue prompts with a model."""

import json

from oie_jax.files import read_lines
from oie_jax.models.policies import DTYPES, GENERATION_DTYPE_HELP, generation_overrides


def cmd_generate(args):
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer.generate import Sampling, generate, stop_ids
    from oie_jax.models.checkpoint import load_model

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    prompts = [args.prompt] if args.prompt is not None else read_lines(args.prompt_file, "prompt")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, **generation_overrides(args.dtype))
    new_tokens = generate(model, tokenizer.encode_batch(prompts), args.max_new_tokens, sampling,
                          eos_ids=stop_ids(model.cfg, tokenizer), batch_size=args.batch_size)
    for prompt, tokens in zip(prompts, new_tokens):
        text = tokenizer.decode(tokens)
        print(json.dumps({"prompt": prompt, "output": text}, ensure_ascii=False) if args.jsonl else text)


def add_parsers(commands) -> None:
    gen = commands.add_parser("generate", help="continue prompts with a model (KV-cache, batched)",
                              description="Prints one continuation per prompt. Greedy unless --temperature > 0. "
                                          "Each row stops at any end-of-sequence id of the model's config, its "
                                          "generation_config.json or its tokenizer.")
    gen.add_argument("--model", required=True, help="oie-jax model directory (from `convert hf-to-jax`)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt")
    source.add_argument("--prompt-file", help="a UTF-8 file with one prompt per non-empty line")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--dtype", choices=DTYPES, help=GENERATION_DTYPE_HELP)
    gen.add_argument("--jsonl", action="store_true", help="print JSON lines {prompt, output}")
    gen.set_defaults(run=cmd_generate)
