"""A grounding model directory: the three parts of a grounded-NER model, each loadable on its own.

    MODEL_DIR/oie_grounding.json   {"head": GroundingConfig, "tokenizer": "llama" (its files are in llama/)
                                   or "bytes"}
    MODEL_DIR/llama/               an oie-jax model directory with its tokenizer (`oie-jax export` makes
                                   it a Hugging Face model, `oie-jax extract` uses it alone)
    MODEL_DIR/vision/              an oie-jax vision model directory (`oie-jax convert vision-to-hf`)
    MODEL_DIR/head/                Orbax checkpoint of the grounding head
"""

import dataclasses
import json

import jax
from etils import epath
from flax import nnx

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.models import encoders
from oie_jax.models.checkpoint import load_model, save_model
from oie_jax.models.directory import config_file, restore_params, save_params
from oie_jax.models.grounding import GroundingConfig, GroundingHead

CONFIG_FILE = "oie_grounding.json"
PARTS_DIRS = {"llama": "llama", "vision": "vision", "head": "head"}


@dataclasses.dataclass
class GroundingParts:
    """The loaded parts of a grounding model (`infer.ground.load_grounder` adds the tokenizer)."""

    llama: nnx.Module
    vision: nnx.Module
    head: GroundingHead
    preprocess: encoders.Preprocess
    tokenizer: str  # "bytes", or the directory that holds the tokenizer files


def save_grounder(directory, params: dict, llama_cfg, vision_cfg, preprocess: encoders.Preprocess,
                  head_cfg: GroundingConfig, tokenizer: str) -> epath.Path:
    """Writes the three parts of `params` ({"llama", "vision", "head"}); every process calls it. The caller
    puts the tokenizer files into `llama/` (`tokenizer` "llama"), or names "bytes"."""
    directory = location(directory)
    for sub in PARTS_DIRS.values():
        (directory / sub).mkdir(parents=True, exist_ok=True)
    save_model(directory / PARTS_DIRS["llama"], llama_cfg, params["llama"])
    encoders.save_vision_model(directory / PARTS_DIRS["vision"], vision_cfg, preprocess, params["vision"])
    save_params(directory / PARTS_DIRS["head"], params["head"])
    if jax.process_index() == 0:
        spec = {"head": head_cfg.to_dict(), "tokenizer": tokenizer}
        (directory / CONFIG_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return directory


def load_spec(directory) -> tuple[GroundingConfig, str]:
    """(head config, tokenizer: "bytes" or the part directory holding its files)."""
    path = config_file(directory, CONFIG_FILE, "grounding model", "train one with a config whose grounding.enabled "
                       "is True (configs/gmner_synth.py)")
    try:
        spec = json.loads(path.read_text())
        return GroundingConfig.from_dict(spec["head"]), spec["tokenizer"]
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"invalid grounding model config ({type(exc).__name__}: {exc})", path) from None


def load_parts(directory) -> GroundingParts:
    directory = location(directory)
    head_cfg, tokenizer = load_spec(directory)
    llama = load_model(directory / PARTS_DIRS["llama"])
    vision, preprocess = encoders.load_vision_model(directory / PARTS_DIRS["vision"])
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GroundingHead(head_cfg, rngs=nnx.Rngs(0))))
    params = restore_params(directory / PARTS_DIRS["head"], nnx.to_pure_dict(state),
                            sharding.inference_shardings(state))
    nnx.replace_by_pure_dict(state, params)
    tokenizer = tokenizer if tokenizer == "bytes" else str(directory / tokenizer)
    return GroundingParts(llama, vision, nnx.merge(graphdef, state), preprocess, tokenizer)
