"""`oie-jax score | eval | extract`: scores of saved predictions, evaluation of a model, extraction."""

import argparse
import dataclasses
import json
import sys

from oie_jax.cli.arguments import positive_int
from oie_jax.cli.data import add_source_argument
from oie_jax.data import format as fmt
from oie_jax.errors import UserError
from oie_jax.eval import DEFAULT_METRIC
from oie_jax.files import read_lines
from oie_jax.models.policies import DTYPES, GENERATION_DTYPE_HELP


def load_gold(path: str, source: str, strict: bool) -> list:
    """Every gold record, inconsistent ones included (a warning on stderr; an error with --strict): a
    score never leaves a gold example out. A gold line that holds no readable record is an error."""
    from oie_jax.data.sources.registry import load_source

    _, result = load_source([path], source, strict=strict, keep_all=True)
    if result.problems:
        raise UserError(f"{len(result.problems):,} gold record(s) cannot be read and so cannot be scored; "
                        f"first: {result.problems[0]}")
    if result.warnings:
        print(f"warning: {len(result.warnings):,} gold records are inconsistent and are scored as they are (first: "
              f"{result.warnings[0]}); --strict makes this an error", file=sys.stderr)
    if not result.records:
        raise UserError("no gold records", path)
    return result.records


def print_metric(scores, name: str) -> None:
    try:
        print(f"{name} = {scores.metric(name):.4f}")
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None


def cmd_score(args):
    from oie_jax.eval import report
    from oie_jax.eval.metrics import score
    from oie_jax.eval.predictions import pair, read_predictions

    golds = load_gold(args.gold, args.source, args.strict)
    outputs, coverage = pair(golds, read_predictions(args.pred), path=args.pred)
    scores = score(golds, outputs, notes=coverage.notes())
    print(report.table_text(scores))
    print_metric(scores, args.metric)
    for path in report.write(scores, args.report, args.json, args.plot, title=f"Scores of {args.pred}"):
        print(f"wrote {path}", file=sys.stderr)


def cmd_eval(args):
    from oie_jax.data.images import ImageSource
    from oie_jax.data.labels import model_label_sets
    from oie_jax.eval import errors, report
    from oie_jax.eval.evaluate import evaluate
    from oie_jax.eval.predictions import write_predictions
    from oie_jax.files import location, prepare_output_dir
    from oie_jax.infer.budget import model_budget
    from oie_jax.infer.predict import load_for_generation, record_images

    golds = load_gold(args.data, args.source, args.strict)[: args.limit]
    model, tokenizer, preprocess = load_for_generation(args.model, args.dtype)
    if (preprocess is None) != (args.images is None):
        raise UserError("--images is for a multimodal model (a directory with oie_multimodal.json), and such a "
                        "model needs it", args.model)
    images = None
    if preprocess is not None:
        source = ImageSource(args.images, preprocess, strict=args.strict)
        images = record_images(golds, source)
        print(source.summary(), file=sys.stderr)
    out = prepare_output_dir(args.out or f"eval-{location(args.model).name}", args.overwrite)
    max_new_tokens = args.max_new_tokens or model_budget(args.model)
    labels = model_label_sets(args.model, args.labels) if args.constrained else None
    outputs, scores = evaluate(model, tokenizer, golds, batch_size=args.batch_size,
                               max_new_tokens=max_new_tokens, progress=not args.no_progress,
                               log=print_warning, labels=labels, images=images)
    if labels is not None:
        scores = dataclasses.replace(scores, notes=(*scores.notes, constrained_note(labels)))
    write_predictions(out / "predictions.jsonl", golds, outputs)
    report.write(scores, out / "report.md", out / "scores.json", out / "f1.png",
                 title=f"Evaluation of {args.model} on {args.data}")
    errors.write(errors.analyse(golds, outputs), out, title=f"Errors of {args.model} on {args.data}")
    print(report.table_text(scores))
    print(scores.generation.summary())
    print_metric(scores, args.metric)
    print(f"wrote {out}: predictions.jsonl (score it again with `oie-jax score`), report.md, scores.json, f1.png, "
          "errors.md/.json/.png (per-label scores, label confusion, kinds of error)", file=sys.stderr)


def print_warning(line: str) -> None:
    """Of evaluate's lines, the warnings (the generation summary is printed after the table)."""
    if line.startswith("warning:"):
        print(line, file=sys.stderr)


def constrained_note(labels: dict) -> str:
    known = "the label sets stored with the model or given" if labels else "no label set (any label)"
    return f"decoding constrained to the format, {known}, and entities copied from the input (--no-constrained: free)"


def cmd_extract(args):
    from oie_jax.data.labels import model_label_sets
    from oie_jax.infer.budget import model_budget
    from oie_jax.infer.extract import extract

    texts = [args.text] if args.text is not None else read_lines(args.input, "input")
    labels = model_label_sets(args.model, args.labels) if args.constrained else None
    max_new_tokens = args.max_new_tokens or model_budget(args.model)
    for result in extract(args.model, texts, args.task, max_new_tokens=max_new_tokens,
                          batch_size=args.batch_size, dtype=args.dtype, labels=labels, image=args.image):
        print(json.dumps(result.to_json(), ensure_ascii=False))


BUDGET_HELP = ("the most tokens generated per output (default: the budget the model's training run chose from its "
               "data, MODEL/generation.json, else 128)")


def add_constraint_arguments(parser) -> None:
    parser.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=True,
                        help="decode only outputs in the unified format, with labels from the label sets and "
                             "entities copied from the input (default: on; --no-constrained for free decoding)")
    parser.add_argument("--labels", help="label sets (JSON: {TASK or LANGUAGE/TASK: {text: [...], items: [...]}}); "
                                         "default: MODEL/labels.json, written by training, else any label")


def add_gold_arguments(parser, flag: str, help: str) -> None:
    parser.add_argument(flag, required=True, help=help)
    add_source_argument(parser, "corpus format of the gold records")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit code 2) on the first inconsistent gold record")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help=f"also print this value (default {DEFAULT_METRIC}; names in docs/metrics.md)")


def add_parsers(commands) -> None:
    """Adds `score`, `eval` and `extract` to the `oie-jax` subcommands."""
    score = commands.add_parser(
        "score", help="score saved predictions against gold records (TL / WL / ALL F1)",
        description="Pairs predictions (JSON Lines with `id` and `output`) with gold records by id and prints F1 "
                    "per subset and language. A gold record without prediction is scored as an empty output; "
                    "both that and predictions without a gold record are counted in the report. "
                    "Definitions: docs/metrics.md.")
    add_gold_arguments(score, "--gold", "gold records: unified JSONL or any corpus format `data inspect` reads")
    score.add_argument("--pred", required=True, help="predictions JSONL: {\"id\": ..., \"output\": ...} per line")
    score.add_argument("--report", help="write a Markdown report here")
    score.add_argument("--json", help="write every number as JSON here")
    score.add_argument("--plot", help="write a bar chart of F1 per subset and language here (PNG)")
    score.set_defaults(run=cmd_score)

    evaluation = commands.add_parser(
        "eval", help="generate outputs for a corpus with a model and score them",
        description="Greedy KV-cache generation in length-sorted batches, then scoring. Writes predictions.jsonl, "
                    "report.md, scores.json and f1.png into --out, and the error analysis (per-label P/R/F1, labels "
                    "confused on the same span, missed/spurious/wrong-label/boundary errors) as errors.md, "
                    "errors.json and errors.png; reports compilations and tokens/s.")
    evaluation.add_argument("--model", required=True, help="oie-jax model directory (text or multimodal)")
    evaluation.add_argument("--images", metavar="DIR",
                            help="a multimodal model's: the records' images, DIR/IMGID.jpg (or .jpeg, .png, .webp; "
                                 "the id of the record's grounding, else its own)")
    add_gold_arguments(evaluation, "--data", "records to evaluate on (unified JSONL or any corpus format)")
    evaluation.add_argument("--batch-size", type=positive_int, default=16)
    evaluation.add_argument("--max-new-tokens", type=positive_int,
help=BUDGET_HELP)
    evaluation.add_argument("--limit", type=positive_int, help="evaluate the first N records only")
    evaluation.add_argument("--out", help="output directory (default: eval-<model directory name>)")
    evaluation.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    evaluation.add_argument("--dtype", choices=DTYPES, help=GENERATION_DTYPE_HELP)
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_constraint_arguments(evaluation)
    evaluation.set_defaults(run=cmd_eval)

    extraction = commands.add_parser(
        "extract", help="extract a text label and items from texts (JSON lines with character spans)",
        description="Prints one JSON line per text: label, items (fields, and for each value that should be a span "
                    "of the text, all its occurrences as [start, end) character offsets), well_formed and the raw "
                    "output.")
    extraction.add_argument("--model", required=True, help="oie-jax model directory (text or multimodal)")
    extraction.add_argument("--task", required=True, choices=list(fmt.TASKS), help="instruction word")
    extraction.add_argument("--image", help="a picture (JPEG, PNG, WebP) that a multimodal model reads every text "
                                            "with")
    texts = extraction.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", help="one text")
    texts.add_argument("--input", help="a UTF-8 file with one text per non-empty line")
    extraction.add_argument("--max-new-tokens", type=positive_int,
help=BUDGET_HELP)
    extraction.add_argument("--batch-size", type=positive_int, default=8)
    extraction.add_argument("--dtype", choices=DTYPES, help=GENERATION_DTYPE_HELP)
    add_constraint_arguments(extraction)
    extraction.set_defaults(run=cmd_extract)
