"""Run configs as code: a Python file whose `get_config()` returns an `ml_collections.ConfigDict`,
with `--config.section.key=value` overrides from the command line (as in big_vision)."""

import ast
import importlib.util
from pathlib import Path

import ml_collections

from oie_jax.errors import UserError

PREFIX = "--config."


def load_config_file(path) -> ml_collections.ConfigDict:
    path = Path(path)
    if not path.is_file():
        raise UserError("no such config file", path)
    spec = importlib.util.spec_from_file_location(f"oie_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the file is user code: name it, whatever went wrong
        raise UserError(f"the config file does not run ({type(exc).__name__}: {exc})", path) from None
    if not callable(getattr(module, "get_config", None)):
        raise UserError("a config file must define get_config() returning an ml_collections.ConfigDict", path)
    try:
        config = module.get_config()
    except Exception as exc:  # a TypeError of ConfigDict's own type checks, say
        raise UserError(f"get_config() failed ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict", path)
    return config


def split_overrides(args: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(`--config.a.b=value` and `--config.a.b value` pairs, the other arguments)."""
    overrides, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(PREFIX):
            key, has_value, value = arg[len(PREFIX):].partition("=")
            if not has_value:
                if i + 1 >= len(args):
                    raise UserError(f"{arg} needs a value ({arg}=VALUE)")
                value, i = args[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def parse_value(text: str):
    """A Python literal (1e-5, 8, True, (1, -1, 1), None, 'x') or else the text as a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Sets each dotted key, which must exist; values keep the type of the field they replace."""
    for key, text in overrides:
        *parents, leaf = key.split(".")
        node = config
        for depth, name in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                raise UserError(f"--config.{key}: no section {'.'.join(parents[: depth + 1])!r} in the config")
            node = node[name]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
            raise UserError(f"--config.{key}: no such field (known here: {known})")
        value = parse_value(text)
        current = node[leaf]
        if isinstance(current, str) and not isinstance(value, str):
            value = text  # a string field takes the text as written ("1" stays "1")
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            node[leaf] = value
        except TypeError as exc:
            raise UserError(f"--config.{key}={text}: {exc}") from None
    return config
