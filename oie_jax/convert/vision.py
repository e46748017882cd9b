"""Vision encoder weights <-> oie_jax vision model directories.

    Hugging Face CLIP / SigLIP safetensors directory (vision-only or whole model: the vision tower is
    taken) -> ViT, streamed tensor by tensor into preallocated arrays; and back (`to_hf`).
    torchvision's MobileNetV2 file (`.pth`, read with PyTorch's weights-only loader and converted once
    to safetensors beside a cache; or that `.safetensors`) -> MobileNetV2, batch norms folded.
"""

import json
import os
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from oie_jax.convert import vision_layout
from oie_jax.convert.tensors import NUMPY_DTYPES, allocated_at, iter_safetensors, safetensors_files, set_at
from oie_jax.errors import UserError
from oie_jax.files import prepare_output_dir, read_json, staged
from oie_jax.models import encoders
from oie_jax.models.encoders import Preprocess
from oie_jax.models.mobilenet import MobileNetV2Config
from oie_jax.models.vision import ViTConfig

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# The processors' defaults (transformers' CLIPImageProcessor / SiglipImageProcessor, torchvision's ImageNet).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_NORMALIZATION = {"clip": (CLIP_MEAN, CLIP_STD), "siglip": ((0.5,) * 3, (0.5,) * 3)}
BATCH_NORM_EPS = 1e-5  # torchvision's MobileNetV2


def convert(src, out, dtype: str | None = None, overwrite: bool = False):
    """Writes the vision model directory `out`; returns the encoder config."""
    src = Path(src)
    if dtype is not None and dtype not in NUMPY_DTYPES:
        raise UserError(f"unsupported dtype {dtype!r}; choose one of {sorted(NUMPY_DTYPES)}")
    dtypes = {"param_dtype": dtype, "dtype": dtype} if dtype else {}
    if src.is_file() and src.suffix in (".pth", ".pt", ".safetensors"):
        cfg, preprocess, params = read_mobilenet_v2(src)
        cfg = cfg.replace(**dtypes)
        params = jax.tree.map(lambda a: a.astype(NUMPY_DTYPES[cfg.param_dtype]), params)  # 3.5M parameters
    elif src.is_dir():
        cfg, preprocess, params = read_vit(src, **dtypes)  # filled in the final dtype: no second copy
    else:
        raise UserError("not a Hugging Face CLIP/SigLIP directory nor a MobileNetV2 .pth/.safetensors file", src)
    out = prepare_output_dir(out, overwrite)
    encoders.save_vision_model(out, cfg, preprocess, params)
    return cfg


# ---- ViT (CLIP, SigLIP) ---------------------------------------------------------------------------

def read_vit(src: Path, **overrides) -> tuple[ViTConfig, Preprocess, dict]:
    cfg = ViTConfig.from_hf_config(read_json(src / "config.json"), **overrides)
    preprocess = hf_preprocess(src, cfg)
    return cfg, preprocess, fill_vit(cfg, iter_safetensors(safetensors_files(src)))


def hf_preprocess(src: Path, cfg: ViTConfig) -> Preprocess:
    """Size, normalisation and resize mode from the processor's config when there is one; a centre
    crop (CLIP's processor) stays a crop, any other resize squashes (SigLIP's)."""
    mean, std = DEFAULT_NORMALIZATION[cfg.layout]
    found = read_json(src / PREPROCESSOR_CONFIG) if (src / PREPROCESSOR_CONFIG).is_file() else {}
    crop = found.get("do_center_crop", cfg.layout == "clip")
    return Preprocess(size=(cfg.image_size, cfg.image_size), mean=found.get("image_mean", mean),
                      std=found.get("image_std", std), resize="crop" if crop else "squash")


def fill_vit(cfg: ViTConfig, tensors) -> dict:
    """Places each (name, tensor, file) of a vision tower into a freshly allocated parameter tree."""
    expected = encoders.abstract_params(cfg)
    dtype = NUMPY_DTYPES[cfg.param_dtype]
    out: dict = {}
    seen: set[str] = set()
    for file_name, tensor, path in tqdm(tensors, desc="tensors", unit="", leave=False, disable=None):
        name = vision_layout.tower_name(file_name)
        if name is None:
            continue
        try:
            entry, layer = vision_layout.lookup(name, cfg)
        except KeyError:
            raise UserError(f"unexpected tensor {file_name!r} for a {cfg.num_layers}-layer {cfg.layout} vision "
                            "tower", path) from None
        if name in seen:
            raise UserError(f"tensor {file_name!r} appears twice", path)
        stacked = 0 if layer is None else 1  # per-layer arrays are stacked on a leading axis
        wants = [_get(expected, p).shape[stacked:] for p in entry.paths]
        try:
            parts = entry.to_ours(tensor, cfg)
        except ValueError:
            parts = ()
        if [tuple(p.shape) for p in parts] != [tuple(w) for w in wants]:
            raise UserError(f"tensor {file_name!r} has shape {tuple(tensor.shape)}, which does not fit the config",
                            path)
        for p, value in zip(entry.paths, parts):
            if layer is None:
                set_at(out, p, np.ascontiguousarray(value, dtype=dtype))
            else:
                allocated_at(out, p, (cfg.num_layers, *value.shape), dtype)[layer] = value
        seen.add(name)
    missing = [name for name, _, _ in vision_layout.hf_names(cfg) if name not in seen]
    if missing:
        raise UserError(f"{len(missing)} vision tensors missing from the checkpoint, e.g. {missing[:3]}")
    return out


def to_hf(src, out, overwrite: bool = False) -> Path:
    """A ViT vision model directory as a Hugging Face `CLIPVisionModel` / `SiglipVisionModel` one."""
    from safetensors.numpy import save_file

    cfg, preprocess = encoders.load_vision_config(src)
    if not isinstance(cfg, ViTConfig):
        raise UserError("only ViT (CLIP, SigLIP) encoders have a Hugging Face layout", src)
    params = encoders.load_vision_params(src, cfg)
    out = prepare_output_dir(out, overwrite)
    with staged(out) as local:
        save_file(hf_tower_tensors(cfg, params), str(local / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg.to_hf_config(), indent=2) + "\n")
    (out / PREPROCESSOR_CONFIG).write_text(json.dumps(hf_processor_config(cfg, preprocess), indent=2) + "\n")
    return out


def hf_tower_tensors(cfg: ViTConfig, params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A ViT's parameters as the Hugging Face tensors of its tower, names prefixed."""
    tensors = {}
    for name, entry, layer in vision_layout.hf_names(cfg):
        parts = tuple(np.asarray(_get(params, p) if layer is None else _get(params, p)[layer]) for p in entry.paths)
        tensors[prefix + name] = np.ascontiguousarray(entry.to_hf(parts, cfg))
    return tensors


def hf_processor_config(cfg: ViTConfig, preprocess: Preprocess) -> dict:
    """The image processor's config that prepares images as `preprocess` does."""
    processor = {"image_processor_type": {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}[cfg.layout],
                 "image_mean": list(preprocess.mean), "image_std": list(preprocess.std),
                 "do_center_crop": preprocess.resize == "crop",
                 "size": {"height": preprocess.size[0], "width": preprocess.size[1]}}
    if preprocess.resize == "crop":
        processor.update(size={"shortest_edge": min(preprocess.size)},
                         crop_size={"height": preprocess.size[0], "width": preprocess.size[1]})
    return processor


# ---- MobileNetV2 (torchvision) --------------------------------------------------------------------

def safetensors_of_pth(pth: Path) -> Path:
    """The tensors of a PyTorch `.pth` state dict as a safetensors file in the cache (written once; a
    file named by its checksum, as torchvision names its downloads, is never rewritten). The `.pth` is
    read with PyTorch's weights-only unpickler: tensors and containers, never arbitrary objects."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "oie-jax"
    target = cache / (pth.stem + ".safetensors")
    if target.is_file() and target.stat().st_mtime >= pth.stat().st_mtime:
        return target
    try:
        import torch
    except ImportError:
        raise UserError("reading a .pth file needs PyTorch (pip install 'oie-jax[torch]')", pth) from None
    from safetensors.torch import save_file

    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- whatever the unpickler refuses, the file is unusable
        raise UserError(f"not a weights-only PyTorch state dict ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})", pth) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("not a state dict of tensors", pth)
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
    partial.replace(target)
    return target


def read_mobilenet_v2(src: Path) -> tuple[MobileNetV2Config, Preprocess, dict]:
    path = safetensors_of_pth(src) if src.suffix in (".pth", ".pt") else src
    tensors = {name: tensor for name, tensor, _ in iter_safetensors([path])}
    classifier = tensors.get("classifier.1.weight")
    cfg = MobileNetV2Config(num_classes=0 if classifier is None else classifier.shape[0])
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise UserError(f"tensor {name!r} missing: not torchvision's MobileNetV2 layout", src)
        used.add(name)
        return tensors[name].astype(np.float64)

    def conv(prefix: str, norm: str) -> dict:
        """A convolution and its batch norm folded into one kernel (HWIO) and bias."""
        scale = take(f"{norm}.weight") / np.sqrt(take(f"{norm}.running_var") + BATCH_NORM_EPS)
        kernel = take(f"{prefix}.weight") * scale[:, None, None, None]
        used.add(f"{norm}.num_batches_tracked")
        return {"kernel": kernel.transpose(2, 3, 1, 0).astype(np.float32),
                "bias": (take(f"{norm}.bias") - take(f"{norm}.running_mean") * scale).astype(np.float32)}

    params = {"stem": conv("features.0.0", "features.0.1")}
    for i, (_, expansion, _, _) in enumerate(cfg.blocks, start=1):
        layers = [f"features.{i}.conv.{j}" for j in range(4)]
        if expansion == 1:
            block = {"depthwise": conv(f"{layers[0]}.0", f"{layers[0]}.1"), "project": conv(layers[1], layers[2])}
        else:
            block = {"expand": conv(f"{layers[0]}.0", f"{layers[0]}.1"),
                     "depthwise": conv(f"{layers[1]}.0", f"{layers[1]}.1"), "project": conv(layers[2], layers[3])}
        params[f"block{i}"] = block
    last = len(cfg.blocks) + 1
    params["head"] = conv(f"features.{last}.0", f"features.{last}.1")
    if cfg.num_classes:
        params["classifier"] = take("classifier.1.weight").T.astype(np.float32)
        params["classifier_bias"] = take("classifier.1.bias").astype(np.float32)
    unused = sorted(set(tensors) - used)
    if unused:
        raise UserError(f"{len(unused)} tensors that torchvision's MobileNetV2 does not have, e.g. {unused[:3]}", src)
    preprocess = Preprocess(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="crop")
    return cfg, preprocess, params


# ---- trees ----------------------------------------------------------------------------------------

def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree
