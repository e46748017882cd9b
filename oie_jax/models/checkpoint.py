"""A LLaMA model directory: our config and the parameters as an Orbax checkpoint (the parameter I/O is
`directory.py`'s, shared with the vision and grounding directories; the tokenizer files that travel with
it are `oie_jax.data.tokenizer`'s business).

    MODEL_DIR/oie_model.json      LlamaConfig fields
    MODEL_DIR/params/             Orbax checkpoint of the parameter tree

Directories are `etils.epath` paths: local, or a bucket (gs://...).
"""

import json

import jax
from etils import epath
from flax import nnx

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.models.config import LlamaConfig
from oie_jax.models.directory import PARAMS_DIR, config_file, restore_params, save_params
from oie_jax.models.llama import Llama

CONFIG_FILE = "oie_model.json"


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
