"""A multimodal model directory: the three parts of an OIELLM that sees the picture
(`models/multimodal.py`), each a directory of its own kind, so each loads and exports on its own.

    MODEL_DIR/oie_multimodal.json  MultimodalConfig fields
    MODEL_DIR/llama/               an oie-jax model directory with its tokenizer files
    MODEL_DIR/vision/              an oie-jax vision model directory (its image preprocessing included)
    MODEL_DIR/projector/           Orbax checkpoint of the projector
"""

import json

import jax
from etils import epath
from flax import nnx

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.models import checkpoint, encoders
from oie_jax.models.directory import config_file, restore_params, save_params
from oie_jax.models.multimodal import MultimodalConfig, MultimodalLlama

CONFIG_FILE = "oie_multimodal.json"
PARTS = ("llama", "vision", "projector")


def is_multimodal(directory) -> bool:
    return (location(directory) / CONFIG_FILE).is_file()


def text_dir(directory):
    """Where a model directory's LLaMA, tokenizer and chat template are: llama/ of a multimodal one, else
    the directory itself."""
    return location(directory) / "llama" if is_multimodal(directory) else location(directory)


def abstract_model(llama_cfg, vision_cfg, cfg: MultimodalConfig) -> MultimodalLlama:
    return nnx.eval_shape(lambda: MultimodalLlama(llama_cfg, vision_cfg, cfg, rngs=nnx.Rngs(0)))


def model_from_params(llama_cfg, vision_cfg, cfg: MultimodalConfig, params: dict) -> MultimodalLlama:
    """The model of a parameter tree {"llama", "vision", "projector"} (placed arrays, or tracers in a step)."""
    graphdef, state = nnx.split(abstract_model(llama_cfg, vision_cfg, cfg))
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def save_multimodal(directory, llama_cfg, vision_cfg, preprocess: encoders.Preprocess, cfg: MultimodalConfig,
                    params: dict) -> epath.Path:
    """Writes `params` ({"llama", "vision", "projector"}) and the configs; every process calls it. The
    caller puts the tokenizer files into `llama/`."""
    directory = location(directory)
    for part in PARTS:
        (directory / part).mkdir(parents=True, exist_ok=True)
    checkpoint.save_model(directory / "llama", llama_cfg, params["llama"])
    encoders.save_vision_model(directory / "vision", vision_cfg, preprocess, params["vision"])
    save_params(directory / "projector", params["projector"])
    if jax.process_index() == 0:
        (directory / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return directory


def load_configs(directory) -> tuple:
    """(LlamaConfig, vision config, Preprocess, MultimodalConfig) of a multimodal model directory."""
    directory = location(directory)
    path = config_file(directory, CONFIG_FILE, "multimodal model",
                       "convert a LLaVA checkpoint with `oie-jax convert llava-to-jax`")
    try:
        cfg = MultimodalConfig(**json.loads(path.read_text()))
    except (TypeError, json.JSONDecodeError) as exc:
        raise UserError(f"invalid multimodal model config ({type(exc).__name__}: {exc})", path) from None
    vision_cfg, preprocess = encoders.load_vision_config(directory / "vision")
    return checkpoint.load_config(directory / "llama"), vision_cfg, preprocess, cfg


def load_params(directory, llama_cfg, vision_cfg, cfg: MultimodalConfig, shardings=None) -> dict:
    """The parameter tree {"llama", "vision", "projector"}, placed by `shardings` or in host memory."""
    directory = location(directory)
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(llama_cfg, vision_cfg, cfg)))
    shardings = shardings or {part: None for part in PARTS}
    return {"llama": checkpoint.load_params(directory / "llama", llama_cfg, shardings["llama"]),
            "vision": encoders.load_vision_params(directory / "vision", vision_cfg, shardings["vision"]),
            "projector": restore_params(directory / "projector", abstract["projector"], shardings["projector"])}


def load_multimodal_model(directory, **llama_overrides) -> tuple[MultimodalLlama, encoders.Preprocess]:
    """(ready model, the images' Preprocess); `llama_overrides` may change the LLaMA's dtypes or remat."""
    llama_cfg, vision_cfg, preprocess, cfg = load_configs(directory)
    llama_cfg = llama_cfg.replace(**llama_overrides)
    shardings = sharding.inference_shardings(nnx.state(abstract_model(llama_cfg, vision_cfg, cfg)))
    params = load_params(directory, llama_cfg, vision_cfg, cfg, shardings)
    return model_from_params(llama_cfg, vision_cfg, cfg, params), preprocess
