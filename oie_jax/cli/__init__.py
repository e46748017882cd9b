"""The `oie-jax` command: one entry point, one module per command group. The library never imports
this package; each module adds its subcommands with `add_parsers(commands)`."""

import argparse
import sys

from oie_jax.errors import UserError

# Command groups in the order `oie-jax --help` lists them.
GROUPS = ("convert", "generate", "data", "train", "evaluate", "grounding", "serve", "translate")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="oie-jax", description="OIELLM information extraction in JAX/Flax.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"oie_jax.cli.{group}").add_parsers(commands)
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
    if overrides and args.command not in ("train", "sweep"):
        parser.error("--config.FIELD=VALUE overrides belong to `oie-jax train` and `oie-jax sweep`")
    args.overrides = overrides
    try:
        return args.run(args) or 0
    except UserError as exc:
        print(f"oie-jax: error: {exc}", file=sys.stderr)
        return exc.exit_code
