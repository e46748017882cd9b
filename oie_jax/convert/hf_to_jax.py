"""Hugging Face LLaMA checkpoint -> oie_jax model directory.

Safetensors are read tensor by tensor into preallocated output arrays, so peak host memory stays
near the size of the output. GGUF files are dequantized whole (`gguf_file`).
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from flax import nnx
from tqdm import tqdm

from oie_jax.convert import layout
from oie_jax.convert.gguf_file import read_gguf
from oie_jax.convert.tensors import NUMPY_DTYPES, allocated_at, iter_safetensors, safetensors_files, set_at
from oie_jax.data.tokenizer import copy_tokenizer_files
from oie_jax.errors import UserError
from oie_jax.files import prepare_output_dir, read_json, staged
from oie_jax.models import checkpoint
from oie_jax.models.config import LlamaConfig

GENERATION_CONFIG = "generation_config.json"


def fill_params(cfg: LlamaConfig, tensors: Iterator[tuple[str, np.ndarray, Path]], dtype, total: int | None = None):
    """Places each (name, tensor, file) into a freshly allocated parameter tree of `dtype`."""
    expected = nnx.to_pure_dict(nnx.state(checkpoint.abstract_model(cfg)))
    out: dict = {}
    seen: set[str] = set()
    for name, tensor, path in tqdm(tensors, total=total, desc="tensors", unit="", leave=False, disable=None):
        try:
            found = layout.lookup(name, cfg)
        except KeyError:
            raise UserError(f"unexpected tensor {name!r} for a {cfg.num_layers}-layer LLaMA", path) from None
        if found is None:
            continue
        entry, layer = found
        want = layout.value_at(expected, entry).shape
        want = want[1:] if layer is not None else want
        if tuple(tensor.shape) != _hf_shape(entry, want, cfg):
            raise UserError(f"tensor {name!r} has shape {tuple(tensor.shape)}, which does not fit the config "
                            f"(expected {_hf_shape(entry, want, cfg)})", path)
        if name in seen:
            raise UserError(f"tensor {name!r} appears twice", path)
        value = entry.to_ours(tensor, cfg)
        if layer is None:
            set_at(out, entry.path, np.ascontiguousarray(value, dtype=dtype))
        else:
            allocated_at(out, entry.path, (cfg.num_layers, *want), dtype)[layer] = value
        seen.add(name)
    missing = [name for name, _, _ in layout.hf_names(cfg) if name not in seen]
    if missing:
        raise UserError(f"{len(missing)} tensors missing from the checkpoint, e.g. {missing[:3]}")
    return out


def _hf_shape(entry: layout.Entry, ours, cfg) -> tuple:
    return tuple(entry.to_hf(np.empty(ours, np.int8), cfg).shape)


def stop_token_overrides(src: Path, hf_config: dict) -> dict:
    """`eos_token_id` as the union of config.json's and generation_config.json's (Llama 3 Instruct
    ends its turns with <|eot_id|>, named in the latter only); {} without a generation config."""
    path = src / GENERATION_CONFIG
    if not path.is_file():
        return {}
    ids = []
    for value in (hf_config.get("eos_token_id"), read_json(path).get("eos_token_id")):
        ids += value if isinstance(value, list) else [] if value is None else [value]
    ids = list(dict.fromkeys(ids))
    return {"eos_token_id": ids[0] if len(ids) == 1 else tuple(ids)} if ids else {}


def convert_safetensors_dir(src: Path, out: Path, dtype: str | None = None) -> LlamaConfig:
    hf_config = read_json(src / "config.json")
    cfg = LlamaConfig.from_hf_config(hf_config, **stop_token_overrides(src, hf_config))
    if dtype:
        cfg = cfg.replace(param_dtype=dtype, dtype=dtype)
    files = safetensors_files(src)
    params = fill_params(cfg, iter_safetensors(files), NUMPY_DTYPES[cfg.param_dtype])
    checkpoint.save_model(out, cfg, params)
    copy_tokenizer_files(src, out)
    return cfg


def convert_gguf(src: Path, gguf_file: str, out: Path, dtype: str | None = None) -> LlamaConfig:
    config, tensors, tokenizer = read_gguf(src, gguf_file)
    dtype = dtype or "float32"
    cfg = LlamaConfig.from_hf_config(config, param_dtype=dtype, dtype=dtype)
    path = src / gguf_file
    named = ((name, tensor, path) for name, tensor in tensors.items())
    params = fill_params(cfg, named, NUMPY_DTYPES[cfg.param_dtype], total=len(tensors))
    checkpoint.save_model(out, cfg, params)
    with staged(out) as local:
        tokenizer.save_pretrained(str(local))
    return cfg


def convert(src, out, gguf_file: str | None = None, dtype: str | None = None, overwrite: bool = False) -> LlamaConfig:
    src = Path(src)
    if not src.is_dir():
        raise UserError("no such directory", src)
    if dtype is not None and dtype not in NUMPY_DTYPES:
        raise UserError(f"unsupported dtype {dtype!r}; choose one of {sorted(NUMPY_DTYPES)}")
    out = prepare_output_dir(out, overwrite)
    if gguf_file:
        return convert_gguf(src, gguf_file, out, dtype)
    return convert_safetensors_dir(src, out, dtype)
