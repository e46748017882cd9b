"""`oie-jax ground | eval-gmner | score-gmner`: grounded NER with a grounding model directory."""

import json
import sys

from oie_jax.cli.arguments import positive_int
from oie_jax.errors import UserError

METRIC = "gmner/f1"
PROPOSALS = '{"IMGID": [[x1, y1, x2, y2], ...]}'


def cmd_ground(args):
    from oie_jax.data.format import Record
    from oie_jax.data.images import ImageError, decode
    from oie_jax.infer.ground import draw, ground, load_grounder

    try:
        image = decode(args.image)
    except ImageError as exc:
        raise UserError(str(exc), args.image) from None
    if not args.text.strip():
        raise UserError("--text is empty")
    regions = None
    if args.proposals:
        from pathlib import Path

        from oie_jax.data.proposals import read_proposals

        proposals, key = read_proposals(args.proposals), Path(args.image).stem
        if key not in proposals.boxes:
            raise UserError(f"{proposals.path}: no proposals for image id {key!r} (the image's file name)")
        regions = [proposals.original(key, image.shape[1], image.shape[0])]
        for problem in proposals.problems:
            print(f"warning: {problem}", file=sys.stderr)
    grounder = load_grounder(args.model)
    record = Record(text=args.text, task="NER", items=tuple((kind, text) for kind, text in args.entity or ()),
                    id=str(args.image))
    outputs = None
    if args.entity:  # the user's entities stand for the LLaMA's: the grounding alone
        from oie_jax.data.format import unrenderable
        from oie_jax.data.packing import answer_tokens

        problem = unrenderable(record)
        if problem:
            raise UserError(f"--entity: {problem}")
        outputs = [answer_tokens(record, grounder.tokenizer)]
    (result,) = ground(grounder, [record], [image], proposals=regions, outputs=outputs,
                       max_new_tokens=args.max_new_tokens, batch_size=1)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        if not result.well_formed:
            print(f"(output not well formed: {result.reason})")
        for entity in result.entities:
            where = "not in the image" if entity.box is None else "box " + ", ".join(f"{v:.0f}" for v in entity.box)
            print(f"{entity.text}\t{entity.type}\t{where}\t(p = {entity.probability:.2f})")
        if not result.entities:
            print("no entity found")
    if args.draw:
        draw(image, result.entities, args.draw)
        print(f"wrote {args.draw}", file=sys.stderr)


def load_gmner_gold(path: str, strict: bool) -> list:
    from oie_jax.cli.evaluate import load_gold

    return load_gold(path, "gmner", strict)


def report_and_print(scores, slices, notes, title: str, out=None) -> None:
    """Scores and their slices by type and by region (`gmner.breakdown`), printed and, with `out`, written as
    report.md, scores.json and scores.png."""
    from oie_jax.eval.grounded import markdown, write_reports

    print(markdown(scores, title, notes, slices), end="")
    print(f"{METRIC} = {scores.metrics()[METRIC]:.4f}")
    if out is not None:
        write_reports(scores, title, notes, out / "report.md", out / "scores.json", out / "scores.png", slices)


def cmd_eval_gmner(args):
    from oie_jax.data.entities import gold_entities
    from oie_jax.eval.gmner import breakdown
    from oie_jax.files import location, prepare_output_dir
    from oie_jax.models.multimodal_dir import is_multimodal

    golds = load_gmner_gold(args.data, args.strict)[: args.limit]
    if is_multimodal(args.model):
        results, scores, notes = generated_regions(args, golds)
    else:
        results, scores, notes = head_regions(args, golds)
    out = prepare_output_dir(args.out or f"eval-gmner-{location(args.model).name}", args.overwrite)
    with (out / "predictions.jsonl").open("w") as f:
        for result in results:
            f.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
    slices = breakdown([gold_entities(r) for r in golds], [[e.as_entity() for e in r.entities] for r in results])
    report_and_print(scores, slices, notes, f"Grounded NER of {args.model} on {args.data}", out)
    print(f"wrote {out}: predictions.jsonl (score it again with `oie-jax score-gmner`), report.md, scores.json, "
          "scores.png", file=sys.stderr)


def head_regions(args, golds):
    """(results, scores, notes) of a grounding model: the LLaMA extracts, the head grounds."""
    from oie_jax.data.images import ImageSource
    from oie_jax.eval.grounded import evaluate
    from oie_jax.infer.ground import load_grounder

    proposals = None
    if args.proposals:
        from oie_jax.data.proposals import read_proposals

        proposals = read_proposals(args.proposals, strict=args.strict)
        proposals.check_ids(args.images)
    grounder = load_grounder(args.model)
    images = ImageSource(args.images, grounder.preprocess, strict=args.strict)
    results, scores, notes = evaluate(grounder, golds, images, args.batch_size, args.max_new_tokens or 64,
                                      progress=not args.no_progress, proposals=proposals,
                                      gold_output=args.gold_entities)
    if args.gold_entities:
        notes.append("the gold entities stood for the LLaMA's output (--gold-entities): the grounding alone")
    images.check()
    return results, scores, notes


def generated_regions(args, golds):
    """(results, scores, notes) of a multimodal model that writes each entity's region (GMNER as generation)."""
    from oie_jax.data.images import ImageSource
    from oie_jax.data.labels import model_label_sets
    from oie_jax.eval.grounded import evaluate_generation
    from oie_jax.infer.budget import model_budget
    from oie_jax.infer.predict import load_for_generation

    for flag, given in (("--proposals", args.proposals), ("--gold-entities", args.gold_entities)):
        if given:
            raise UserError(f"{flag} is for a grounding model's head; a multimodal model writes the regions itself",
                            args.model)
    model, tokenizer, preprocess = load_for_generation(args.model)
    images = ImageSource(args.images, preprocess, strict=args.strict)
    labels = model_label_sets(args.model, None) if args.constrained else None
    results, scores, notes = evaluate_generation(model, tokenizer, golds, images, args.batch_size,
                                                 args.max_new_tokens or model_budget(args.model),
                                                 progress=not args.no_progress, labels=labels)
    images.check()
    notes.append("the multimodal model wrote each entity's region (GMNER as generation)"
                 + (", decoding constrained to the format" if labels is not None else ""))
    return results, scores, notes


def cmd_score_gmner(args):
    from oie_jax.data.entities import gold_entities
    from oie_jax.eval.gmner import breakdown, score
    from oie_jax.eval.grounded import pair, read_grounded_predictions
    from oie_jax.files import location

    golds = load_gmner_gold(args.gold, args.strict)
    predicted, notes = pair(golds, read_grounded_predictions(args.pred))
    out = location(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    gold = [gold_entities(r) for r in golds]
    report_and_print(score(gold, predicted), breakdown(gold, predicted), notes, f"Grounded NER scores of {args.pred}",
                     out)


def add_parsers(commands) -> None:
    """Adds `ground`, `eval-gmner` and `score-gmner`."""
    grounding = commands.add_parser(
        "ground", help="extract the entities of a text and find each in an image (grounded NER)",
        description="Runs a grounding model (the WORKDIR/model of a grounding run): the LLaMA extracts the "
                    "entities and their types, the grounding head puts each on a box of the image or says it is not "
                    "in the image. Prints one line per entity (text, type, box in image pixels, probability).")
    grounding.add_argument("--model", required=True, help="grounding model directory")
    grounding.add_argument("--image", required=True, help="the image (JPEG, PNG, WebP, ...)")
    grounding.add_argument("--text", required=True, help="the text (a tweet)")
    grounding.add_argument("--draw", help="write the image with the boxes and their labels here (PNG)")
    grounding.add_argument("--json", action="store_true", help="print the result as one JSON line")
    grounding.add_argument("--proposals", help=f"candidate boxes, JSON {PROPOSALS} in image pixels; the image's "
                                               "file name without extension is its id")
    grounding.add_argument("--entity", nargs=2, action="append", metavar=("TYPE", "TEXT"),
                           help="ground this entity of the text instead of extracting them (repeat for several): "
                                "the grounding alone, on gold entities, as eval-gmner --gold-entities")
    grounding.add_argument("--max-new-tokens", type=positive_int, default=64)
    grounding.set_defaults(run=cmd_ground)

    evaluation = commands.add_parser(
        "eval-gmner", help="ground a Twitter-GMNER-layout corpus with a model and score GMNER, MNER and EEG",
        description="The model is a grounding model (a head grounds the LLaMA's entities) or a multimodal model "
                    "trained on `Grounded NER` records (`data convert --from gmner --grounded`), which writes each "
                    "entity's region itself. Writes predictions.jsonl ({id, entities: [{text, type, box}]}, boxes in "
                    "image pixels), report.md, scores.json and scores.png into --out. Definitions: docs/metrics.md.")
    evaluation.add_argument("--model", required=True, help="grounding or multimodal model directory")
    evaluation.add_argument("--data", required=True, help="GMNER text file or folder (txt/ with xml/ beside it)")
    evaluation.add_argument("--images", required=True, help="directory of the images (IMGID.jpg, ...)")
    evaluation.add_argument("--proposals", help=f"candidate boxes per image, JSON {PROPOSALS} in image pixels "
                                                "(needed by a model trained with grounding.cells=False)")
    evaluation.add_argument("--strict", action="store_true",
                            help="fail on the first inconsistent gold record, unreadable image or proposal problem")
    evaluation.add_argument("--batch-size", type=positive_int, default=8)
    evaluation.add_argument("--max-new-tokens", type=positive_int,
                            help="output budget (default: 64 for a grounding model, a multimodal model's own budget)")
    evaluation.add_argument("--constrained", action="store_true",
                            help="a multimodal model's: decoding constrained to the format, its labels and regions")
    evaluation.add_argument("--limit", type=positive_int, help="evaluate the first N tweets only")
    evaluation.add_argument("--gold-entities", action="store_true",
                            help="ground the gold entities instead of the LLaMA's: scores the grounding alone (EEG "
                                 "and GMNER without the extraction's errors)")
    evaluation.add_argument("--out", help="output directory (default: eval-gmner-<model directory name>)")
    evaluation.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluation.set_defaults(run=cmd_eval_gmner)

    scoring = commands.add_parser(
        "score-gmner", help="score grounded predictions against Twitter-GMNER gold (GMNER / MNER / EEG)",
        description="Pairs predictions (JSON Lines: {\"id\": IMGID, \"entities\": [{\"text\", \"type\", \"box\": "
                    "[x1, y1, x2, y2] or null}]}, boxes in image pixels) with gold tweets by image id. A tweet "
                    "without prediction counts as predicting nothing; both that and unknown ids are reported.")
    scoring.add_argument("--gold", required=True, help="GMNER text file or folder (txt/ with xml/ beside it)")
    scoring.add_argument("--pred", required=True, help="predictions JSONL")
    scoring.add_argument("--strict", action="store_true", help="fail on the first inconsistent gold record")
    scoring.add_argument("--out", help="also write report.md, scores.json and scores.png here")
    scoring.set_defaults(run=cmd_score_gmner)
