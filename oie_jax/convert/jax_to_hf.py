"""oie_jax model directory -> Hugging Face LLaMA checkpoint that `transformers` loads as is.

Writes safetensors shards one at a time (a shard above `max_shard_bytes` starts a new file), the
index, a complete `config.json`, `generation_config.json` and the tokenizer files.
"""

import json
import sys

import numpy as np
from etils import epath
from tqdm import tqdm

from oie_jax.convert import layout
from oie_jax.convert.hf_to_jax import GENERATION_CONFIG
from oie_jax.convert.tensors import INDEX_FILE, NUMPY_DTYPES
from oie_jax.data.tokenizer import copy_tokenizer_files
from oie_jax.errors import UserError
from oie_jax.files import prepare_output_dir, staged
from oie_jax.models import checkpoint
from oie_jax.models.config import LlamaConfig

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


def plan_shards(cfg: LlamaConfig, params: dict, itemsize: int, max_shard_bytes: int) -> list[list[tuple]]:
    """Groups (hf_name, entry, layer) into shards of at most max_shard_bytes (one tensor may exceed it)."""
    shards: list[list[tuple]] = [[]]
    size = 0
    for name, entry, layer in layout.hf_names(cfg):
        value = layout.value_at(params, entry, layer)  # a view: only its size is read
        nbytes = value.size * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, entry, layer))
        size += nbytes
    return shards


def hf_tensor(params, entry, layer, cfg, dtype) -> np.ndarray:
    return np.ascontiguousarray(entry.to_hf(np.asarray(layout.value_at(params, entry, layer)), cfg), dtype=dtype)


def convert(src, out, dtype: str | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
            overwrite: bool = False) -> epath.Path:
    """An oie-jax model directory as a Hugging Face one; the parameters are read into host memory."""
    cfg = checkpoint.load_config(src)
    check_dtype(dtype)
    params = checkpoint.load_params(src, cfg)
    out = prepare_output_dir(out, overwrite)
    write(out, cfg, params, dtype, max_shard_bytes)
    if not copy_tokenizer_files(src, out):
        print(f"warning: {src} has no tokenizer files; {out} has none either", file=sys.stderr)
    return out


def check_dtype(dtype: str | None) -> None:
    if dtype is not None and dtype not in NUMPY_DTYPES:
        raise UserError(f"unsupported dtype {dtype!r}; choose one of {sorted(NUMPY_DTYPES)}")


def write(out: epath.Path, cfg: LlamaConfig, params: dict, dtype: str | None = None,
          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Safetensors shards, their index, config.json and generation_config.json of host `params` into
    the empty directory `out`."""
    from safetensors.numpy import save_file

    dtype = dtype or cfg.param_dtype
    np_dtype = NUMPY_DTYPES[dtype]
    shards = plan_shards(cfg, params, np.dtype(np_dtype).itemsize, max_shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    progress = tqdm(total=sum(len(s) for s in shards), desc="tensors", unit="", leave=False, disable=None)
    for file_name, shard in zip(names, shards):
        tensors = {}
        for name, entry, layer in shard:
            tensors[name] = hf_tensor(params, entry, layer, cfg, np_dtype)
            total += tensors[name].nbytes
            weight_map[name] = file_name
            progress.update()
        with staged(out) as local:  # one shard at a time on local disk when `out` is a bucket
            save_file(tensors, str(local / file_name), metadata={"format": "pt"})
    progress.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    _write_json(out / "config.json", cfg.to_hf_config(torch_dtype=dtype))
    _write_json(out / GENERATION_CONFIG, generation_config(cfg))


def generation_config(cfg: LlamaConfig) -> dict:
    eos = list(cfg.eos_token_ids)
    return {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": cfg.pad_token_id,
        "do_sample": False,
    }


def _write_json(path: epath.Path, value: dict):
    path.write_text(json.dumps(value, indent=2) + "\n")
