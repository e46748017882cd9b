"""`oie-jax translate`: a corpus into other languages with an LLM, filtered, reviewed and reported."""

import sys

from oie_jax.cli.arguments import positive_int
from oie_jax.errors import UserError


def cmd_translate(args):
    from pathlib import Path

    from etils import epath

    from oie_jax.data.sources import split_from_name
    from oie_jax.data.sources.registry import load_source
    from oie_jax.data.tokenizer import load_tokenizer
    from oie_jax.files import location
    from oie_jax.translate import backends, run
    from oie_jax.translate.calibration import read_calibrated
    from oie_jax.translate.labels import LabelTables
    from oie_jax.translate.prompt import load_examples

    targets = [t.strip() for t in args.to.split(",") if t.strip()]
    if not targets:
        raise UserError("--to needs at least one language code (en, zh, ...)")
    out = epath.Path(location(args.out))
    if out.exists() and any(out.iterdir()) and not (out / run.CACHE).exists():
        raise UserError(f"not a translation output directory (no {run.CACHE}); name a new or empty one", out)
    sources = []
    for path in args.paths:
        _, loaded = load_source([path], args.source, strict=args.strict)
        for line in loaded.summary_lines():
            print(line, file=sys.stderr)
        split = split_from_name(Path(path)) if Path(path).is_file() else ""
        sources += [(record, split) for record in loaded.records]
    sources = [run.Source(key, record, split) for key, (record, split) in enumerate(sources[:args.limit])]
    if not sources:
        raise UserError("no records to translate")
    languages = sorted({s.record.language for s in sources})
    if len(languages) != 1 or not languages[0]:
        raise UserError(f"the records must share one source language (found {languages or 'none'})")
    source_language = languages[0]
    tables = LabelTables.load(source_language, args.labels)
    examples = load_examples(source_language, targets, args.example)
    if args.calibrated:  # checked before anything is asked
        read_calibrated(args.calibrated, [s.record for s in sources])
    if args.estimate:
        return print_estimate(run.estimate(sources, targets, tables, examples, tokenizer=(
            load_tokenizer(location(args.estimate_tokenizer)) if args.estimate_tokenizer else None)), args.max_tokens)
    if args.local:
        backend = backends.LocalBackend(location(args.local), max_tokens=args.max_tokens, batch_size=args.batch_size)
    else:
        if not (args.endpoint and args.model):
            raise UserError("name a backend: --endpoint URL --model NAME, or --local MODEL_DIR")
        backend = backends.OpenAIBackend(args.endpoint, args.model, args.api_key_env, args.max_tokens,
                                         args.concurrency, args.timeout, args.retries, args.backoff)
    print(f"translating {len(sources):,} records from {source_language} into {', '.join(targets)} with "
          f"{backend.name} ({backend.model}); answers cached in {out / run.CACHE}", file=sys.stderr)
    report = run.translate(sources, targets, backend, out, tables, examples, args.calibrated,
                           progress=not args.no_progress)
    total = report["total"]
    print(f"kept {total['kept']:,} of {total['in']:,} (rejected {total['rejected']:,}); answers "
          + ", ".join(f"{n:,} {how}" for how, n in report["answers"].items())
          + f"; {backend.requests:,} requests sent. Corpus: {out / run.DATA}; report: {out / 'report.md'}; "
          f"review: {out / 'review.jsonl'}")
    if args.strict and total["rejected"]:
        print(f"oie-jax: error: {total['rejected']:,} records rejected (--strict)", file=sys.stderr)
        return 1
    return 0


def print_estimate(per_target: dict, max_tokens: int) -> int:
    for target, counts in per_target.items():
        tokens = f"{counts['prompt_tokens']:,} prompt tokens" if counts["prompt_tokens"] is not None else \
            "prompt tokens: pass --tokenizer DIR to count them"
        print(f"{target}: {counts['requests']:,} requests ({counts['unknown_labels']:,} records with an unknown "
              f"label are not asked), {counts['prompt_chars']:,} prompt characters, {tokens}; answers at most "
              f"{counts['requests'] * max_tokens:,} tokens (--max-tokens {max_tokens})")
    return 0


def add_parsers(commands) -> None:
    from oie_jax.data.sources.registry import SOURCES

    parser = commands.add_parser(
        "translate", help="translate a corpus with an LLM (labels by table, filters, review, loss report)",
        description="Translates the records of PATHS into each --to language: labels through rule-based tables, "
                    "text and entities by one LLM request per record (a one-shot example in the prompt), then "
                    "filters: untranslated characters, entities that do not occur in the translated text, and "
                    "structure. OUT/data receives release-format files (Train_En_0_SCNM_dataset.json, ...) that "
                    "`oie-jax data inspect` and training read, review.jsonl with every rejected record (edit its "
                    "'translation' and pass it back with --calibrated: the fixes are merged into "
                    "OUT/corrections.jsonl, which every later run applies and none overwrites), and "
                    "report.md/.json/.png. Every answer is cached in OUT/cache.sqlite: a stopped run started again "
                    "asks nothing twice.")
    parser.add_argument("paths", nargs="+", metavar="PATHS", help="corpus files or directories")
    parser.add_argument("--from", dest="source", default="auto", choices=["auto", *SOURCES],
                        help="corpus format (default: guessed)")
    parser.add_argument("--to", required=True, help="target languages, comma-separated (e.g. en,zh)")
    parser.add_argument("--out", required=True, help="output directory (new, empty, or an earlier run's to resume)")
    backend = parser.add_argument_group("backend (one of)")
    backend.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    backend.add_argument("--model", help="model name the endpoint serves")
    backend.add_argument("--local", metavar="MODEL_DIR", help="an oie-jax model directory, run in this process")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help="environment variable holding the endpoint's API key (never pass a key itself)")
    parser.add_argument("--labels", help="label tables (JSON) that extend the built-in ones")
    parser.add_argument("--example", help="one-shot examples (JSON keyed SOURCE>TARGET) that replace the built-in")
    parser.add_argument("--calibrated", help="an edited review.jsonl (OUT/review.jsonl itself will do): its "
                                             "translations replace the LLM's, now and in later runs")
    parser.add_argument("--limit", type=positive_int, help="translate only the first N records (trials)")
    parser.add_argument("--max-tokens", type=positive_int, default=512, help="longest answer, in tokens")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at most")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="generation batch of --local")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=5, help="retries on 429, 5xx, timeouts and broken answers")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--estimate", action="store_true",
                        help="only print what the run would ask (requests, prompt size); asks nothing")
    parser.add_argument("--tokenizer", dest="estimate_tokenizer", metavar="DIR",
                        help="with --estimate: count prompt tokens with this model directory's tokenizer")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any record is rejected")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=cmd_translate)
