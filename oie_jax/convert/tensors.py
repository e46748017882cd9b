"""Safetensors in, parameter trees out: what the LLaMA and the vision converters share. Tensors are read one
at a time into preallocated output arrays, so peak host memory stays near the size of the output."""

from collections.abc import Callable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from oie_jax.errors import UserError
from oie_jax.files import read_json

INDEX_FILE = "model.safetensors.index.json"
NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def safetensors_files(src: Path) -> list[Path]:
    """The weight files of a checkpoint directory: the index's shards, or the single file."""
    if (src / INDEX_FILE).is_file():
        weight_map = read_json(src / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError("no weight_map in the index", src / INDEX_FILE)
        files = [src / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"shards named by the index are missing: {missing}", src / INDEX_FILE)
        return files
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise UserError("no *.safetensors files (and no index) in this directory", src)
    return files


def iter_safetensors(files: list[Path], rename: Callable[[str], str | None] | None = None
                     ) -> Iterator[tuple[str, np.ndarray, Path]]:
    """(name, tensor, file) of every tensor; with `rename`, of those it gives a name to (under that name),
    the others not read."""
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="np") as f:
                for name in f.keys():
                    new_name = name if rename is None else rename(name)
                    if new_name is not None:
                        yield new_name, f.get_tensor(name), path
        except SafetensorError as exc:
            raise UserError(f"corrupt safetensors file ({exc})", path) from None


def tensor_names(files: list[Path]) -> Iterator[tuple[str, Path]]:
    """(name, file) of every tensor, none of them read."""
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), framework="np") as f:
                yield from ((name, path) for name in f.keys())
        except SafetensorError as exc:
            raise UserError(f"corrupt safetensors file ({exc})", path) from None


def parent_of(tree: dict, path) -> dict:
    """The dict that holds `path`'s last key, made on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    return tree


def set_at(tree: dict, path, value) -> None:
    parent_of(tree, path)[path[-1]] = value


def allocated_at(tree: dict, path, shape, dtype) -> np.ndarray:
    """The array at `path` of `tree`, allocated (uninitialised) the first time: stacked layers are filled
    one slice at a time."""
    node = parent_of(tree, path)
    if path[-1] not in node:
        node[path[-1]] = np.empty(shape, dtype)
    return node[path[-1]]
