"""A vision model directory: the encoder's config, how images are prepared for it, and its parameters.

    MODEL_DIR/oie_vision.json   {"architecture": "vit" | "mobilenet_v2", "config": {...}, "preprocess": {...}}
    MODEL_DIR/params/           Orbax checkpoint of the parameter tree

Directories are `etils.epath` paths: local, or a bucket (gs://...).
"""

import dataclasses
import json
import math

import jax
from etils import epath
from flax import nnx

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.models.directory import PARAMS_DIR, config_file, restore_params, save_params
from oie_jax.models.mobilenet import HEAD_CHANNELS, MobileNetV2, MobileNetV2Config
from oie_jax.models.vision import ViT, ViTConfig

CONFIG_FILE = "oie_vision.json"
ARCHITECTURES = {"vit": (ViTConfig, ViT), "mobilenet_v2": (MobileNetV2Config, MobileNetV2)}
RESIZE_MODES = ("squash", "pad", "crop")
_VIT_BASE = dict(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224)
# Architectures for random inits and dry runs (the published configurations); weights come from
# `oie-jax convert vision-to-jax`.
PRESETS = {
    "clip-vit-b32": ViTConfig("clip", patch_size=32, layer_norm_eps=1e-5, **_VIT_BASE),
    "clip-vit-b16": ViTConfig("clip", patch_size=16, layer_norm_eps=1e-5, **_VIT_BASE),
    "clip-vit-l14": ViTConfig("clip", image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                              num_layers=24, num_heads=16, layer_norm_eps=1e-5),
    "siglip-vit-b16": ViTConfig("siglip", patch_size=16, layer_norm_eps=1e-6, **_VIT_BASE),
    "mobilenet-v2": MobileNetV2Config(),
}


def preset(name: str):
    if name not in PRESETS:
        raise UserError(f"unknown vision preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def image_size(cfg) -> tuple[int, int]:
    """The encoder's pretraining resolution (height, width)."""
    return (cfg.image_size,) * 2 if isinstance(cfg, ViTConfig) else (224, 224)


def vision_width(cfg) -> int:
    """The width of an encoder's grid features."""
    return HEAD_CHANNELS if isinstance(cfg, MobileNetV2Config) else cfg.hidden_size


def num_params(cfg) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(abstract_params(cfg)))


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How an image becomes the encoder's input: resized to `size` (height, width) by `resize`
    (squash: stretched; pad: aspect kept, padded at the bottom and right; crop: shorter side to size,
    centre cut out), scaled to [0, 1], then normalised with the encoder's per-channel mean and std."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "pad"

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if self.resize not in RESIZE_MODES:
            raise UserError(f"resize mode {self.resize!r} is not one of {RESIZE_MODES}")
        if len(self.size) != 2 or min(self.size) < 1 or len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise UserError(f"invalid preprocessing {self}")


def architecture_of(cfg) -> str:
    return next(name for name, (config_class, _) in ARCHITECTURES.items() if isinstance(cfg, config_class))


def build(cfg, rngs: nnx.Rngs):
    return ARCHITECTURES[architecture_of(cfg)][1](cfg, rngs=rngs)


def abstract_params(cfg) -> dict:
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0)))))


def preprocess_for(cfg, init=None) -> "Preprocess":
    """How images are prepared: a model directory's own preprocessing, or for a random init of `cfg` its
    pretraining size, aspect kept (pad), values scaled to [-1, 1]."""
    if init is not None:
        return load_vision_config(init)[1]
    return Preprocess(image_size(cfg), (0.5,) * 3, (0.5,) * 3, "pad")


def save_vision_model(directory, cfg, preprocess: Preprocess, params: dict) -> epath.Path:
    directory = location(directory)
    save_params(directory / PARAMS_DIR, params)
    if jax.process_index() == 0:
        spec = {"architecture": architecture_of(cfg), "config": cfg.to_dict(),
                "preprocess": dataclasses.asdict(preprocess)}
        (directory / CONFIG_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return directory


def load_vision_config(directory):
    """(encoder config, Preprocess) of a vision model directory."""
    path = config_file(directory, CONFIG_FILE, "vision model", "convert weights with `oie-jax convert vision-to-jax`")
    try:
        spec = json.loads(path.read_text())
        config_class = ARCHITECTURES[spec["architecture"]][0]
        return config_class(**spec["config"]), Preprocess(**spec["preprocess"])
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"invalid vision model config ({type(exc).__name__}: {exc})", path) from None


def load_vision_params(directory, cfg, shardings=None) -> dict:
    return restore_params(location(directory) / PARAMS_DIR, abstract_params(cfg), shardings)


def load_vision_model(directory, shardings=None, **config_overrides):
    """(ready encoder, Preprocess); `config_overrides` may change dtypes or remat."""
    cfg, preprocess = load_vision_config(directory)
    cfg = cfg.replace(**config_overrides)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))))
    if shardings is None:
        shardings = sharding.inference_shardings(state)
    nnx.replace_by_pure_dict(state, load_vision_params(directory, cfg, shardings))
    return nnx.merge(graphdef, state), preprocess
