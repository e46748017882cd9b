"""Hugging Face LLaVA checkpoints (`LlavaForConditionalGeneration`: a CLIP or SigLIP vision tower,
LLaVA's two-layer projector, a LLaMA) <-> oie-jax multimodal model directories
(`models/multimodal_dir.py`). Each part goes through its own converter's table (`layout.py` for the
LLaMA, `vision_layout.py` for the tower); the projector's weights are transposed. Values are exact.

Tensor names: transformers 5 still writes its 4.x names (`language_model.model.*`,
`language_model.lm_head.weight`, `vision_tower.*`, `multi_modal_projector.*`), and those are written
here; its in-memory names (`model.language_model.*`, `model.vision_tower.*`, `lm_head.weight`) are read
as well.
"""

import json
from pathlib import Path

import numpy as np

from oie_jax.convert import hf_to_jax, jax_to_hf, layout, vision
from oie_jax.convert.tensors import NUMPY_DTYPES, iter_safetensors, safetensors_files, tensor_names
from oie_jax.data.tokenizer import copy_tokenizer_files
from oie_jax.errors import UserError
from oie_jax.files import location, prepare_output_dir, read_json, staged
from oie_jax.models import multimodal_dir
from oie_jax.models.config import LlamaConfig
from oie_jax.models.multimodal import MultimodalConfig
from oie_jax.models.vision import ViTConfig

# A LLaVA name's prefix -> (part, the prefix the part's own checkpoint gives it).
PREFIXES = (
    ("language_model.model.", "llama", "model."), ("model.language_model.", "llama", "model."),
    ("language_model.lm_head.", "llama", "lm_head."), ("lm_head.", "llama", "lm_head."),
    ("vision_tower.", "vision", ""), ("model.vision_tower.", "vision", ""),
    ("multi_modal_projector.", "projector", ""), ("model.multi_modal_projector.", "projector", ""),
)
WRITTEN = {"llama": {"model.": "language_model.model.", "lm_head.": "language_model.lm_head."},
           "vision": "vision_tower.", "projector": "multi_modal_projector."}
# The projector: Hugging Face's Linear (out, in) <-> ours (in, out).
PROJECTOR = {"linear_1.weight": "hidden", "linear_1.bias": "hidden_bias", "linear_2.weight": "out",
             "linear_2.bias": "out_bias"}


def route(name: str) -> tuple[str, str] | None:
    """(part, the tensor's name in that part's own checkpoint) of a LLaVA tensor name; None for a name
    outside the three parts."""
    for prefix, part, inner in PREFIXES:
        if name.startswith(prefix):
            return part, inner + name.removeprefix(prefix)
    return None


def renamer(part: str):
    return lambda name: (found[1] if (found := route(name)) and found[0] == part else None)


def select_strategy(vision_cfg: ViTConfig) -> str:
    """LLaVA's vision_feature_select_strategy for a tower: CLIP's class token is dropped ("default"),
    SigLIP has none ("full")."""
    return "default" if vision_cfg.class_token else "full"


def read_configs(src: Path, dtype: str | None = None):
    """(LlamaConfig, ViTConfig, Preprocess, MultimodalConfig) of a LLaVA directory, or a one-line error
    naming the setting oie-jax does not run."""
    path = src / "config.json"
    hf = read_json(path)
    if hf.get("model_type") != "llava":
        raise UserError(f"model_type {hf.get('model_type')!r} is not 'llava' (LlavaForConditionalGeneration)", path)
    unsupported = {"projector_hidden_act": "gelu", "multimodal_projector_bias": True}
    for key, value in unsupported.items():
        if hf.get(key, value) != value:
            raise UserError(f"{key}={hf[key]!r} is not supported (only {value!r})", path)
    feature_layer = hf.get("vision_feature_layer", -2)
    if not isinstance(feature_layer, int):
        raise UserError(f"vision_feature_layer={feature_layer!r}: only one layer is supported", path)
    text = dict(hf.get("text_config") or {})
    text.setdefault("dtype", hf.get("dtype") or hf.get("torch_dtype"))
    text.setdefault("model_type", "llama")
    llama_cfg = LlamaConfig.from_hf_config(text, **hf_to_jax.stop_token_overrides(src, text))
    dtype = dtype or llama_cfg.param_dtype
    llama_cfg = llama_cfg.replace(param_dtype=dtype, dtype=dtype)
    vision_cfg = ViTConfig.from_hf_config(hf.get("vision_config") or {}, param_dtype=dtype, dtype=dtype)
    strategy = hf.get("vision_feature_select_strategy", "default")
    if strategy != select_strategy(vision_cfg):
        raise UserError(f"vision_feature_select_strategy={strategy!r} with a {vision_cfg.layout} tower is not "
                        f"supported (only {select_strategy(vision_cfg)!r})", path)
    image_token = hf.get("image_token_index", hf.get("image_token_id"))
    if not isinstance(image_token, int):
        raise UserError("config.json has no integer image_token_index", path)
    cfg = MultimodalConfig(image_token_id=image_token, feature_layer=feature_layer, param_dtype=dtype, dtype=dtype)
    return llama_cfg, vision_cfg, vision.hf_preprocess(src, vision_cfg), cfg


def convert(src, out, dtype: str | None = None, overwrite: bool = False) -> tuple:
    """A Hugging Face LLaVA directory as an oie-jax multimodal model directory; returns its configs."""
    src = Path(src)
    if not src.is_dir():
        raise UserError("no such directory", src)
    if dtype is not None and dtype not in NUMPY_DTYPES:
        raise UserError(f"unsupported dtype {dtype!r}; choose one of {sorted(NUMPY_DTYPES)}")
    llama_cfg, vision_cfg, preprocess, cfg = read_configs(src, dtype)
    files = safetensors_files(src)
    for name, path in tensor_names(files):
        if route(name) is None:
            raise UserError(f"unexpected tensor {name!r}: not in LLaVA's language model, vision tower or projector",
                            path)
    np_dtype = NUMPY_DTYPES[cfg.param_dtype]
    params = {"llama": hf_to_jax.fill_params(llama_cfg, iter_safetensors(files, renamer("llama")), np_dtype),
              "vision": vision.fill_vit(vision_cfg, iter_safetensors(files, renamer("vision"))),
              "projector": read_projector(iter_safetensors(files, renamer("projector")), np_dtype)}
    out = prepare_output_dir(out, overwrite)
    multimodal_dir.save_multimodal(out, llama_cfg, vision_cfg, preprocess, cfg, params)
    copy_tokenizer_files(src, out / "llama")
    return llama_cfg, vision_cfg, cfg


def read_projector(tensors, dtype) -> dict:
    params = {}
    for name, tensor, path in tensors:
        if name not in PROJECTOR:
            raise UserError(f"unexpected projector tensor {name!r} (LLaVA's has {sorted(PROJECTOR)})", path)
        params[PROJECTOR[name]] = np.ascontiguousarray(tensor.T if tensor.ndim == 2 else tensor, dtype=dtype)
    missing = sorted(name for name, ours in PROJECTOR.items() if ours not in params)
    if missing:
        raise UserError(f"projector tensors missing from the checkpoint: {missing}")
    return params


def to_hf(src, out, dtype: str | None = None, overwrite: bool = False) -> Path:
    """An oie-jax multimodal model directory as a Hugging Face LLaVA one (one safetensors file)."""
    from safetensors.numpy import save_file

    llama_cfg, vision_cfg, preprocess, cfg = multimodal_dir.load_configs(src)
    if not isinstance(vision_cfg, ViTConfig):
        raise UserError("only ViT (CLIP, SigLIP) towers have a LLaVA layout", src)
    if cfg.pool != 1:
        raise UserError(f"LLaVA has no pooling of the image grid (this model pools {cfg.pool} x {cfg.pool})", src)
    jax_to_hf.check_dtype(dtype)
    dtype = dtype or llama_cfg.param_dtype
    params = multimodal_dir.load_params(src, llama_cfg, vision_cfg, cfg)
    np_dtype = NUMPY_DTYPES[dtype]
    tensors = {}
    for name, entry, layer in layout.hf_names(llama_cfg):
        prefix = next(p for p in WRITTEN["llama"] if name.startswith(p))
        tensors[WRITTEN["llama"][prefix] + name.removeprefix(prefix)] = jax_to_hf.hf_tensor(
            params["llama"], entry, layer, llama_cfg, np_dtype)
    tensors.update(vision.hf_tower_tensors(vision_cfg, params["vision"], WRITTEN["vision"]))
    for name, ours in PROJECTOR.items():
        value = np.asarray(params["projector"][ours])
        tensors[WRITTEN["projector"] + name] = value.T if value.ndim == 2 else value
    tensors = {name: np.ascontiguousarray(t, dtype=np_dtype) for name, t in tensors.items()}
    out = prepare_output_dir(out, overwrite)
    with staged(out) as local:
        save_file(tensors, str(local / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(llama_cfg, vision_cfg, preprocess, cfg, dtype), indent=2)
                                     + "\n")
    (out / hf_to_jax.GENERATION_CONFIG).write_text(json.dumps(jax_to_hf.generation_config(llama_cfg), indent=2)
                                                   + "\n")
    processor = vision.hf_processor_config(vision_cfg, preprocess)
    (out / vision.PREPROCESSOR_CONFIG).write_text(json.dumps(processor, indent=2) + "\n")
    copy_tokenizer_files(location(src) / "llama", out)
    return out


def hf_config(llama_cfg: LlamaConfig, vision_cfg: ViTConfig, preprocess, cfg: MultimodalConfig, dtype: str) -> dict:
    vision_config = {k: v for k, v in vision_cfg.to_hf_config().items() if k not in ("architectures", "torch_dtype")}
    text_config = {k: v for k, v in llama_cfg.to_hf_config(dtype).items() if k not in ("architectures", "torch_dtype")}
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_index": cfg.image_token_id,
        "image_seq_length": cfg.image_tokens(vision_cfg, preprocess.size),
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "vision_feature_layer": cfg.feature_layer,
        "vision_feature_select_strategy": select_strategy(vision_cfg),
        "tie_word_embeddings": llama_cfg.tie_word_embeddings,
        "dtype": dtype,
    }
