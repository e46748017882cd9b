"""What every model directory shares, whichever family it holds (LLaMA, vision encoder, grounding head):
the parameters as an Orbax checkpoint in DIR/params/, and a config file whose absence gets a one-line
error. Directories are `etils.epath` paths: local, or a bucket (gs://...)."""

import hashlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from oie_jax.errors import UserError
from oie_jax.files import location

PARAMS_DIR = "params"


def save_params(path: epath.Path, params: dict) -> None:
    """An Orbax checkpoint of a parameter tree, any model's. Every process calls it."""
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in jax.tree.leaves(params)):
        host = jax.tree.map(np.asarray, params)
        # Orbax copies every host array before writing unless told not to; without the copy, peak memory
        # stays at the size of the parameters. Synchronous and uncompressed: weights barely compress.
        registry = ocp.type_handlers.create_type_handler_registry(
            (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
        handler = ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=registry)
        ocp.Checkpointer(handler).save(path, args=ocp.args.PyTreeSave(host), force=True)
    else:  # each process writes its own shards
        with ocp.StandardCheckpointer() as checkpointer:  # leaving waits for the background write
            checkpointer.save(path, params, force=True)


def config_file(directory, name: str, kind: str, hint: str) -> epath.Path:
    """The config file `name` of a `kind` ("model", "vision model") directory, or a one-line error
    naming the directory, with `hint` on how to make one."""
    directory = location(directory)
    if not directory.is_dir():
        raise UserError(f"no such {kind} directory", directory)
    if not (directory / name).is_file():
        raise UserError(f"not an oie-jax {kind} directory (no {name}; {hint})", directory)
    return directory / name


def restore_params(path: epath.Path, abstract: dict, shardings=None) -> dict:
    """An Orbax parameter tree shaped like `abstract`, placed by `shardings` or as numpy arrays."""
    if shardings is None:  # without a sharding, Orbax restores a numpy array
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    else:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UserError(f"cannot restore parameters ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                        path) from None


def weights_fingerprint(directory) -> str:
    """A digest of a model directory's parameter files (names and bytes): two directories give the same
    one exactly when they hold the same weights in the same layout (`oie-jax translate` keys its answer
    cache with it). Reads every byte once (about a second for SmolLM2's 538 MB)."""
    params = location(directory) / PARAMS_DIR
    digest = hashlib.sha256()
    for path in sorted(files_under(params)):
        digest.update(str(path.relative_to(params)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def files_under(directory: epath.Path) -> list[epath.Path]:
    """Every file below `directory` (epath has no recursive glob: on a bucket it would be one request per entry)."""
    found = []
    for entry in directory.iterdir():
        found += files_under(entry) if entry.is_dir() else [entry]
    return found
