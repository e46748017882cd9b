"""A model directory: our config, the parameters as an Orbax checkpoint, the tokenizer files.

    MODEL_DIR/oie_model.json      LlamaConfig fields
    MODEL_DIR/params/             Orbax checkpoint of the parameter tree
    MODEL_DIR/tokenizer.json ...  copied tokenizer files
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from oie_jax.data.tokenizer import TOKENIZER_FILES
from oie_jax.errors import UserError
from oie_jax.files import read_json
from oie_jax.models.config import LlamaConfig
from oie_jax.models.llama import Llama

CONFIG_FILE = "oie_model.json"
PARAMS_DIR = "params"


def abstract_model(cfg: LlamaConfig) -> Llama:
    """The model with jax.ShapeDtypeStruct leaves: shapes and metadata, no memory."""
    return nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))


def save_model(directory, cfg: LlamaConfig, params: dict, tokenizer_dir=None) -> Path:
    """Writes `params` (host arrays, or jax.Arrays possibly sharded over several processes) with the
    config and tokenizer files into an existing directory. Every process calls it."""
    directory = Path(directory).absolute()
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in jax.tree.leaves(params)):
        host = jax.tree.map(np.asarray, params)
        # Orbax copies every host array before writing unless told not to; without the copy, peak memory
        # stays at the size of the parameters. Synchronous and uncompressed: weights barely compress.
        registry = ocp.type_handlers.create_type_handler_registry(
            (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
        handler = ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=registry)
        ocp.Checkpointer(handler).save(directory / PARAMS_DIR, args=ocp.args.PyTreeSave(host), force=True)
    else:  # each process writes its own shards
        with ocp.StandardCheckpointer() as checkpointer:  # leaving waits for the background write
            checkpointer.save(directory / PARAMS_DIR, params, force=True)
    if jax.process_index() == 0:
        (directory / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, directory)
    return directory


def copy_tokenizer_files(src, dst) -> list[str]:
    copied = [name for name in TOKENIZER_FILES if (Path(src) / name).is_file()]
    for name in copied:
        shutil.copyfile(Path(src) / name, Path(dst) / name)
    return copied


def load_config(directory) -> LlamaConfig:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise UserError("no such model directory", directory)
    if not path.is_file():
        raise UserError(f"not an oie-jax model directory (no {CONFIG_FILE}; convert a Hugging Face model with "
                        "`oie-jax convert hf-to-jax`)", directory)
    try:
        return LlamaConfig.from_dict(read_json(path))
    except TypeError as exc:
        raise UserError(f"invalid model config ({exc})", path) from None


def load_params(directory, cfg: LlamaConfig, shardings=None) -> dict:
    """The parameter tree restored in cfg.param_dtype, placed by `shardings` (a matching tree of
    jax.sharding.Sharding) or on the first device."""
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg)))
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    path = Path(directory).absolute() / PARAMS_DIR
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UserError(f"cannot restore parameters ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                        path) from None


def load_model(directory, shardings=None, **config_overrides) -> Llama:
    """A ready model; `config_overrides` may change dtypes, remat, ... (a change of shape fails to
    restore)."""
    cfg = load_config(directory).replace(**config_overrides)
    return model_from_params(cfg, load_params(directory, cfg, shardings))


def model_from_params(cfg: LlamaConfig, params: dict) -> Llama:
    graphdef, state = nnx.split(abstract_model(cfg))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
