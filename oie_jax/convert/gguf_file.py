"""LLaMA models in llama.cpp's GGUF files, read without PyTorch.

The tensors are dequantized by the `gguf` package's numpy kernels and renamed to Hugging Face's names,
the config comes from the file's metadata, the tokenizer from `transformers`' GGUF tokenizer converter
(the `tokenizers` library underneath) fed with that metadata. `tests/test_smollm2.py` checks all three
against `transformers` loading the same file into PyTorch.
"""

import re
from pathlib import Path

import numpy as np

from oie_jax.errors import UserError

# GGUF's names of a LLaMA's tensors -> Hugging Face's (llama.cpp's `convert_hf_to_gguf.py` maps them the other way).
TOP_LEVEL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
IN_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# Metadata key (after "llama.") -> Hugging Face config field.
CONFIG_FIELDS = {"block_count": "num_hidden_layers", "context_length": "max_position_embeddings",
                 "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
                 "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                 "attention.key_length": "head_dim", "rope.freq_base": "rope_theta",
                 "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size"}
# The special tokens ("bos" -> `bos_token` in the tokenizer, `bos_token_id` in the config) by the metadata key of
# their id (after "tokenizer.ggml.").
SPECIAL_TOKENS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                    "tokenizer.ggml.scores")


def hf_name(name: str, path: Path) -> str:
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    match = LAYER_TENSOR.fullmatch(name)
    if match is None or match.group(2) not in IN_LAYER:
        raise UserError(f"unexpected tensor {name!r} for a LLaMA (rope scaling tensors are not read from GGUF "
                        "files: convert the model's safetensors instead)", path)
    return f"model.layers.{match.group(1)}.{IN_LAYER[match.group(2)]}.weight"


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's query and key rows interleaved for its rotary embedding (the two
    halves of a head alternate); Hugging Face keeps the halves apart."""
    rows = weight.shape[0] // heads // 2
    return weight.reshape(heads, rows, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def read_config(metadata: dict, tensor_names: set[str], vocabulary: int | None, path: Path) -> dict:
    """The Hugging Face config.json of the file's LLaMA (`metadata`: the file's fields but the tokenizer's
    arrays; `vocabulary`: the tokenizer's size)."""
    architecture = metadata.get("general.architecture")
    if architecture != "llama":
        raise UserError(f"unsupported GGUF architecture {architecture!r}: oie-jax reads LLaMA models only", path)
    if any(key.startswith("llama.rope.scaling.") for key in metadata) or "rope_freqs.weight" in tensor_names:
        raise UserError("GGUF files with rope scaling are not read: convert the model's safetensors instead", path)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "tie_word_embeddings": "output.weight" not in tensor_names, "torch_dtype": "float32"}
    config |= {field: metadata[f"llama.{key}"] for key, field in CONFIG_FIELDS.items() if f"llama.{key}" in metadata}
    config |= {f"{name}_token_id": metadata[f"tokenizer.ggml.{key}"] for name, key in SPECIAL_TOKENS.items()
               if f"tokenizer.ggml.{key}" in metadata}
    if "vocab_size" not in config and vocabulary is not None:
        config["vocab_size"] = vocabulary
    return config


def read_tokenizer(reader, metadata: dict, path: Path):
    """The file's tokenizer, built from its vocabulary by `transformers`' GGUF tokenizer converter (its own
    metadata reader imports torch, so the metadata comes from ours)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    values = metadata | {name: reader.fields[name].contents() for name in TOKENIZER_ARRAYS if name in reader.fields}
    settings = {group: {field: values[f"tokenizer.{key}"] for key, field in renames.items()
                        if f"tokenizer.{key}" in values} for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    vocabulary, config = settings["tokenizer"], settings["tokenizer_config"]
    if "tokens" not in vocabulary:
        raise UserError("the GGUF file has no tokenizer (tokenizer.ggml.tokens)", path)
    if vocabulary.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to a sentencepiece vocabulary by default
        config.setdefault("add_bos_token", True)
    for name, key in SPECIAL_TOKENS.items():
        token_id = values.get(f"tokenizer.ggml.{key}")
        config[f"{name}_token"] = vocabulary["tokens"][token_id] if token_id is not None else None
    try:
        backend, more = convert_gguf_tokenizer(metadata["general.architecture"], vocabulary)
    except ValueError as exc:
        raise UserError(f"cannot build the GGUF file's tokenizer ({str(exc).splitlines()[0][:200]})", path) from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **more)


def read_gguf(src: Path, gguf_file: str):
    """(Hugging Face config dict, {Hugging Face name: float32 array}, tokenizer) of a LLaMA GGUF file."""
    try:
        import gguf
        import transformers  # noqa: F401 (the tokenizer's converter)
    except ModuleNotFoundError as exc:
        raise UserError(f"reading GGUF files needs the {exc.name} package: pip install 'oie-jax[gguf]'") from None
    path = src / gguf_file
    if not path.is_file():
        raise UserError("GGUF file not found", path)
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read GGUF file ({str(exc).splitlines()[0][:200]})", path) from None
    metadata = {name: field.contents() for name, field in reader.fields.items() if name not in TOKENIZER_ARRAYS}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    config = read_config(metadata, {tensor.name for tensor in reader.tensors}, tokens and len(tokens.data), path)
    heads = {"q_proj": config["num_attention_heads"],
             "k_proj": config.get("num_key_value_heads", config["num_attention_heads"])}
    tensors = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name, path)
        try:
            value = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
        except NotImplementedError:
            raise UserError(f"tensor {tensor.name!r}: the gguf package cannot dequantize "
                            f"{tensor.tensor_type.name}", path) from None
        projection = name.split(".")[-2]
        tensors[name] = unpermute(value, heads[projection]) if projection in heads else value
    return config, tensors, read_tokenizer(reader, metadata, path)
