"""The `oie-jax` command: one entry point, one subcommand per job."""

import argparse
import json
import signal
import sys
from pathlib import Path

from oie_jax.data.sources.registry import SOURCES
from oie_jax.errors import UserError
from oie_jax.files import read_lines
from oie_jax.models.config import DTYPES


def cmd_convert_hf_to_jax(args):
    from oie_jax.convert import hf_to_jax

    cfg = hf_to_jax.convert(args.src, args.out, gguf_file=args.gguf_file, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out}: LLaMA with {cfg.num_params() / 1e6:.1f}M parameters in {cfg.param_dtype}")


def cmd_convert_jax_to_hf(args):
    from oie_jax.convert import jax_to_hf

    out = jax_to_hf.convert(args.src, args.out, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 1024**3),
                            overwrite=args.overwrite)
    print(f"wrote {out}: load it with transformers.LlamaForCausalLM.from_pretrained({str(out)!r})")


def cmd_generate(args):
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.infer.generate import Sampling, generate
    from oie_jax.models.checkpoint import load_model

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    prompts = [args.prompt] if args.prompt is not None else read_lines(args.prompt_file, "prompt")
    tokenizer = load_tokenizer(args.model)
    overrides = {"dtype": args.dtype} if args.dtype else {}
    model = load_model(args.model, **overrides)
    new_tokens = generate(model, tokenizer.encode_batch(prompts), args.max_new_tokens, sampling,
                          batch_size=args.batch_size)
    for prompt, tokens in zip(prompts, new_tokens):
        text = tokenizer.decode(tokens)
        print(json.dumps({"prompt": prompt, "output": text}, ensure_ascii=False) if args.jsonl else text)


def cmd_data_inspect(args):
    from oie_jax.data.inspect import report
    from oie_jax.data.sources.registry import load_source

    source, result = load_source(args.paths, args.source, strict=args.strict)
    print(report(source, result))
    if args.pack:
        from oie_jax.data.packing import EncodeStats, encode, pack, pad
        from oie_jax.data.tokenizer import load_tokenizer

        if not args.tokenizer:
            raise UserError("--pack needs --tokenizer (a model directory, tokenizer.json or .model)")
        tokenizer = load_tokenizer(args.tokenizer)
        stats = EncodeStats()
        sequences = [s for r in result.records if (s := encode(r, tokenizer, args.pack, stats)) is not None]
        packed, padded = pack(sequences, args.pack, pad_id=0), pad(sequences, args.pack, pad_id=0)
        print(f"packing into rows of {args.pack} tokens: {len(sequences):,} sequences, "
              f"{sum(len(s.tokens) for s in sequences):,} tokens; packed {len(packed.tokens):,} rows, "
              f"efficiency {packed.efficiency:.1%} (padded one per row: {padded.efficiency:.1%})")
        print(f"  prompts cut to fit: {stats.prompts_cut:,} ({stats.prompt_tokens_cut:,} tokens); skipped: "
              + (", ".join(f"{n:,} {why}" for why, n in stats.skipped.items()) or "none"))


def cmd_data_convert(args):
    from oie_jax.data.sources.registry import load_source, write_jsonl

    source, result = load_source(args.src, args.source, strict=args.strict)
    for line in result.summary_lines():
        print(line, file=sys.stderr)
    for problem in result.problems:
        print(f"rejected: {problem}", file=sys.stderr)
    count = write_jsonl(result.records, Path(args.out))
    print(f"wrote {count:,} {source} records to {args.out} ({len(result.problems):,} rejected, listed above)")


def cmd_train(args):
    from oie_jax.train.config_file import apply_overrides, load_config_file

    config = apply_overrides(load_config_file(args.config), args.overrides)
    if args.dry_run:
        from oie_jax.train.plan import plan

        print(plan(config))
        return
    start_distributed(args)
    from oie_jax.train.loop import train

    outcome = train(config, args.workdir)
    if outcome.stopped_by:  # the exit status of a process ended by that signal, for job schedulers
        return 128 + signal.Signals[outcome.stopped_by].value
    return 0


def start_distributed(args) -> None:
    """jax.distributed for several processes: auto-detected on TPU pods and SLURM (--distributed), or
    given explicitly (any cluster, or several CPU processes on one machine over gloo)."""
    import jax

    if args.coordinator_address or args.num_processes:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
        jax.distributed.initialize(args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize()


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oie-jax", description="OIELLM information extraction in JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="move LLaMA weights between Hugging Face and oie-jax")
    directions = convert.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    to_jax = directions.add_parser(
        "hf-to-jax", help="Hugging Face safetensors (or GGUF) directory -> oie-jax model directory",
        description="Reads config.json and single or sharded safetensors tensor by tensor (or a GGUF file "
                    "through transformers, dequantized) and writes an Orbax checkpoint, our config and the "
                    "tokenizer files.")
    to_jax.add_argument("src", help="Hugging Face model directory")
    to_jax.add_argument("out", help="output oie-jax model directory")
    to_jax.add_argument("--gguf-file", help="read this GGUF file (name inside SRC) instead of safetensors")
    to_jax.add_argument("--dtype", choices=DTYPES, help="parameter and compute dtype (default: the source's)")
    to_jax.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    to_jax.set_defaults(run=cmd_convert_hf_to_jax)

    to_hf = directions.add_parser(
        "jax-to-hf", help="oie-jax model directory -> Hugging Face directory (safetensors, config, tokenizer)")
    to_hf.add_argument("src", help="oie-jax model directory")
    to_hf.add_argument("out", help="output Hugging Face model directory")
    to_hf.add_argument("--dtype", choices=DTYPES, help="tensor dtype (default: the model's)")
    to_hf.add_argument("--max-shard-gb", type=float, default=5.0, help="start a new shard above this size")
    to_hf.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    to_hf.set_defaults(run=cmd_convert_jax_to_hf)

    gen = commands.add_parser("generate", help="continue prompts with a model (KV-cache, batched)",
                              description="Prints one continuation per prompt. Greedy unless --temperature > 0.")
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
    gen.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: the model's)")
    gen.add_argument("--jsonl", action="store_true", help="print JSON lines {prompt, output}")
    gen.set_defaults(run=cmd_generate)

    data = commands.add_parser("data", help="read, check and convert IE corpora")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    sources = ("auto", *SOURCES)
    inspect = data_commands.add_parser(
        "inspect", help="counts per language, subset, task and label; rejected records with file and line",
        description="Reads corpus files (files, directories or globs) and reports what they hold. Records that "
                    "cannot be used are listed with file, line, field and reason, and counted per file.")
    inspect.add_argument("paths", nargs="+", help="files, directories or glob patterns")
    inspect.add_argument("--from", dest="source", choices=sources, default="auto",
                         help="corpus format (default: guessed from the first path)")
    inspect.add_argument("--strict", action="store_true", help="fail (exit code 2) on the first bad record")
    inspect.add_argument("--pack", type=positive_int, metavar="LENGTH",
                         help="also report packing into rows of LENGTH tokens")
    inspect.add_argument("--tokenizer", help="tokenizer for --pack: model directory, tokenizer.json or .model")
    inspect.set_defaults(run=cmd_data_inspect)
    convert_data = data_commands.add_parser(
        "convert", help="corpus files -> JSON Lines of unified records",
        description="Writes one JSON record per line (id, language, subset, task, text, label, items, and "
                    "grounding for GMNER). Rejected records are listed on stderr.")
    convert_data.add_argument("--from", dest="source", choices=sources, default="auto")
    convert_data.add_argument("src", nargs="+", help="files, directories or glob patterns")
    convert_data.add_argument("out", help="output .jsonl file")
    convert_data.add_argument("--strict", action="store_true", help="fail (exit code 2) on the first bad record")
    convert_data.set_defaults(run=cmd_data_convert)

    train = commands.add_parser(
        "train", help="train or fine-tune a model from a config file; re-running resumes",
        description="Trains as the config file says (configs/*.py; any field can be overridden with "
                    "--config.SECTION.FIELD=VALUE) and writes checkpoints, metrics.jsonl, TensorBoard files and "
                    "the final model under WORKDIR. Running the same command again resumes from the latest "
                    "checkpoint. SIGTERM or Ctrl-C saves the current step before stopping.")
    train.add_argument("--config", required=True, help="a Python file defining get_config()")
    train.add_argument("--workdir", required=True, help="run directory (created; reused to resume)")
    train.add_argument("--dry-run", action="store_true",
                       help="plan only: mesh and shardings for mesh.devices devices, memory per device; no data read")
    cluster = train.add_argument_group("several processes (multi-host)")
    cluster.add_argument("--distributed", action="store_true",
                         help="call jax.distributed.initialize() with its auto-detection (TPU pods, SLURM)")
    cluster.add_argument("--coordinator-address", help="HOST:PORT of process 0")
    cluster.add_argument("--num-processes", type=positive_int)
    cluster.add_argument("--process-id", type=int)
    train.set_defaults(run=cmd_train, overrides=[])
    from oie_jax.eval.score_cli import add_parsers  # score, eval, extract (it imports positive_int from here)

    add_parsers(commands)
    return parser


def main(argv=None) -> int:
    from oie_jax.train.config_file import split_overrides

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        overrides, argv = split_overrides(argv)
    except UserError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    if overrides and args.command != "train":
        parser.error("--config.FIELD=VALUE overrides belong to `oie-jax train`")
    args.overrides = overrides
    try:
        return args.run(args) or 0
    except UserError as exc:
        print(f"oie-jax: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
