"""`oie-jax data inspect | convert | synth-gmner | synth-picture`: read, check, convert and generate IE corpora."""

import sys
from pathlib import Path

from oie_jax.cli.arguments import positive_int
from oie_jax.data.sources.registry import SOURCES
from oie_jax.errors import UserError


def cmd_inspect(args):
    from oie_jax.data.inspect import report
    from oie_jax.data.sources.registry import load_source

    source, result = load_source(args.paths, args.source, strict=args.strict)
    print(report(source, result))
    if args.images:
        print(check_images(result.records, args.images, args.strict))
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


def check_images(records, directory, strict: bool) -> str:
    """Decodes the image of every record that names one (Twitter-GMNER); one line: how many were read
    and which could not be used."""
    from tqdm import tqdm

    from oie_jax.convert.vision import IMAGENET_MEAN, IMAGENET_STD
    from oie_jax.data.images import ImageSource
    from oie_jax.models.encoders import Preprocess

    ids = list(dict.fromkeys(r.grounding.image for r in records if r.grounding is not None))
    if not ids:
        raise UserError("--images: no record names an image (Twitter-GMNER records do)")
    source = ImageSource(directory, Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD), strict=strict)
    batch = 32
    for _ in tqdm(source.batches(ids, batch), total=-(-len(ids) // batch), desc="images", unit="batch",
                  leave=False, disable=None):
        pass
    return f"images in {directory}: {source.summary()}"


def cmd_convert(args):
    from oie_jax.data.sources.registry import load_source, write_jsonl

    source, result = load_source(args.src, args.source, strict=args.strict)
    for line in result.summary_lines():
        print(line, file=sys.stderr)
    for problem in result.problems:
        print(f"rejected: {problem}", file=sys.stderr)
    records = result.records
    if args.grounded:
        from oie_jax.data.entities import grounded_record

        if source != "gmner":
            raise UserError(f"--grounded needs Twitter-GMNER input (entities with boxes), not {source}")
        records = [grounded_record(r) for r in records]
    count = write_jsonl(records, Path(args.out))
    print(f"wrote {count:,} {source} records to {args.out} ({len(result.problems):,} rejected, listed above)")


def cmd_synth_gmner(args):
    from oie_jax.data.synth_gmner import synthesize

    sizes = synthesize(args.out, args.n, args.seed)
    print(f"wrote {sum(sizes.values()):,} synthetic tweets to {args.out} ("
          + ", ".join(f"{split} {count:,}" for split, count in sizes.items()) + "): txt/, xml/, images/")


def cmd_synth_picture(args):
    from oie_jax.data.synth_picture import synthesize

    sizes = synthesize(args.out, args.n, args.seed)
    print(f"wrote {sum(sizes.values()):,} records whose picture decides to {args.out} ("
          + ", ".join(f"{split} {count:,}" for split, count in sizes.items()) + "): {train,dev,test}.jsonl, images/")


def add_synth_arguments(parser, what: str) -> None:
    """--out, --n and --seed of a synthetic corpus."""
    parser.add_argument("--out", required=True, help="output directory (new or empty)")
    parser.add_argument("--n", type=positive_int, default=1000, help=f"{what} in all, split 70/15/15 (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_source_argument(parser, what: str = "corpus format") -> None:
    parser.add_argument("--from", dest="source", choices=("auto", *SOURCES), default="auto",
                        help=f"{what} (default: guessed from the first path)")


def add_parsers(commands) -> None:
    data = commands.add_parser("data", help="read, check and convert IE corpora")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    inspect = actions.add_parser(
        "inspect", help="counts per language, subset, task and label; rejected records with file and line",
        description="Reads corpus files (files, directories or globs) and reports what they hold. Records that "
                    "cannot be used are listed with file, line, field and reason, and counted per file; records "
                    "kept with a warning (an entity not found in its text) are counted and listed too.")
    inspect.add_argument("paths", nargs="+", help="files, directories or glob patterns")
    add_source_argument(inspect)
    inspect.add_argument("--strict", action="store_true", help="fail (exit code 2) on the first rejected record")
    inspect.add_argument("--pack", type=positive_int, metavar="LENGTH",
                         help="also report packing into rows of LENGTH tokens")
    inspect.add_argument("--tokenizer", help="tokenizer for --pack: model directory, tokenizer.json or .model")
    inspect.add_argument("--images", metavar="DIR",
                         help="also decode every record's image, DIR/IMGID.jpg (or .jpeg, .png, .webp), and report "
                              "the missing, truncated and unreadable ones (--strict: fail on the first)")
    inspect.set_defaults(run=cmd_inspect)

    convert = actions.add_parser(
        "convert", help="corpus files -> JSON Lines of unified records",
        description="Writes one JSON record per line (id, language, subset, task, text, label, items, and "
                    "grounding for GMNER). Rejected records are listed on stderr.")
    add_source_argument(convert)
    convert.add_argument("src", nargs="+", help="files, directories or glob patterns")
    convert.add_argument("out", help="output .jsonl file")
    convert.add_argument("--strict", action="store_true", help="fail (exit code 2) on the first rejected record")
    convert.add_argument("--grounded", action="store_true",
                         help="GMNER input as `Grounded NER` records, whose output writes each entity's region "
                              "(`none`, or its largest box as 'x1 y1 x2 y2' in hundredths of the image): training "
                              "data for GMNER as generation with a multimodal model (score it with eval-gmner)")
    convert.set_defaults(run=cmd_convert)

    synth = actions.add_parser(
        "synth-gmner", help="generate a synthetic grounded-NER corpus in the Twitter-GMNER layout",
        description="Writes OUT/txt/{train,dev,test}.txt (CoNLL with IMGID lines), OUT/xml/IMGID.xml (Pascal VOC "
                    "boxes named by entity) and OUT/images/IMGID.jpg: pictures of coloured shapes, and tweets that "
                    "name some of them ('Red Circle', a PER; squares are ORG, triangles LOC, stars OTHER) and some "
                    "that are not in the picture. The ground truth is exact; the same seed gives the same corpus.")
    add_synth_arguments(synth, "tweets")
    synth.set_defaults(run=cmd_synth_gmner)

    picture = actions.add_parser(
        "synth-picture", help="generate an NER corpus whose entity types only the picture tells",
        description="Writes OUT/{train,dev,test}.jsonl (unified NER records, each with its image in `grounding`) and "
                    "OUT/images/IMGID.jpg. Each text names one thing from a pool of names that are people, places, "
                    "organisations and other things alike ('Jordan', 'Phoenix'), in a sentence that fits any of "
                    "them; its picture shows one shape whose kind gives the type (circle PER, square ORG, triangle "
                    "LOC, star OTHER). Text and type are drawn independently: without the picture, a model can only "
                    "guess among the four types.")
    add_synth_arguments(picture, "records")
    picture.set_defaults(run=cmd_synth_picture)
