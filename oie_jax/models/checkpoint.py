"""A model directory: our config and the parameters as an Orbax checkpoint (the tokenizer files that
travel with it are `oie_jax.data.tokenizer`'s business).

    MODEL_DIR/oie_model.json      LlamaConfig fields
    MODEL_DIR/params/             Orbax checkpoint of the parameter tree

Directories are `etils.epath` paths: local, or a bucket (gs://...).
"""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.models.config import LlamaConfig
from oie_jax.models.llama import Llama

CONFIG_FILE = "oie_model.json"
PARAMS_DIR = "params"


def abstract_model(cfg: LlamaConfig) -> Llama:
    """The model with jax.ShapeDtypeStruct leaves: shapes and metadata, no memory."""
    return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def abstract_params(cfg: LlamaConfig) -> dict:
    return nnx.to_pure_dict(nnx.state(abstract_model(cfg)))


def save_model(directory, cfg: LlamaConfig, params: dict) -> epath.Path:
    """Writes `params` (host arrays, or jax.Arrays possibly sharded over several processes) and the
    config into an existing directory. Every process calls it."""
    directory = location(directory)
    save_params(directory / PARAMS_DIR, params)
    if jax.process_index() == 0:
        (directory / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return directory


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


def load_config(directory) -> LlamaConfig:
    path = config_file(directory, CONFIG_FILE, "model", "convert a Hugging Face model with `oie-jax convert hf-to-jax`")
    try:
        return LlamaConfig.from_dict(json.loads(path.read_text()))
    except (TypeError, json.JSONDecodeError) as exc:
        raise UserError(f"invalid model config ({exc})", path) from None


def load_params(directory, cfg: LlamaConfig, shardings=None) -> dict:
    """The parameter tree restored in cfg.param_dtype, placed by `shardings` (a matching tree of
    jax.sharding.Sharding), or as numpy arrays in host memory when None (for an export: nothing is
    put on an accelerator)."""
    return restore_params(location(directory) / PARAMS_DIR, abstract_params(cfg), shardings)


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


def load_model(directory, shardings=None, **config_overrides) -> Llama:
    """A ready model; `config_overrides` may change dtypes, remat, ... (a change of shape fails to
    restore). `shardings` default: `sharding.inference_shardings` (one device when the model fits on
    it, else split over the local devices)."""
    cfg = load_config(directory).replace(**config_overrides)
    if shardings is None:
        shardings = sharding.inference_shardings(nnx.state(abstract_model(cfg)))
    return model_from_params(cfg, load_params(directory, cfg, shardings))


def model_from_params(cfg: LlamaConfig, params: dict) -> Llama:
    graphdef, state = nnx.split(abstract_model(cfg))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
