"""Hugging Face -> oie_jax -> Hugging Face: exact tensors, a complete config, loadable by transformers."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from oie_jax.convert import hf_to_jax, jax_to_hf
from oie_jax.models.checkpoint import load_config, load_model
from tests.helpers import llama31_hf_config, random_tokens, save_random_hf_llama


def read_all(directory) -> dict[str, np.ndarray]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


@pytest.mark.parametrize("dtype, tie", [("float32", False), ("bfloat16", True)])
def test_round_trip_is_bitwise_and_loads_in_transformers(tmp_path, dtype, tie):
    src, ours, back = tmp_path / "src", tmp_path / "ours", tmp_path / "back"
    save_random_hf_llama(src, llama31_hf_config(tie=tie, torch_dtype=dtype), dtype=dtype)
    hf_to_jax.convert(src, ours)
    assert load_config(ours).param_dtype == dtype
    jax_to_hf.convert(ours, back)

    before, after = read_all(src), read_all(back)
    before.pop("lm_head.weight", None) if tie else None
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype, name
        np.testing.assert_array_equal(before[name].view(np.uint8), after[name].view(np.uint8), err_msg=name)

    config = json.loads((back / "config.json").read_text())
    for key in ("architectures", "rope_theta", "rope_scaling", "tie_word_embeddings", "bos_token_id",
                "eos_token_id", "torch_dtype"):
        assert config[key] is not None, key
    assert config["rope_scaling"]["original_max_position_embeddings"] == 64
    assert config["eos_token_id"] == [2, 3] and config["torch_dtype"] == dtype
    generation = json.loads((back / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 3] and generation["bos_token_id"] == 1

    original = transformers.LlamaForCausalLM.from_pretrained(str(src), dtype="auto").eval()
    reloaded, info = transformers.LlamaForCausalLM.from_pretrained(str(back), output_loading_info=True, dtype="auto")
    assert reloaded.dtype == original.dtype == getattr(torch, dtype)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tokens = torch.tensor(random_tokens((2, 48), 320), dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(tokens).logits, original(tokens).logits, rtol=0, atol=0)


def test_sharded_export_and_import(tmp_path):
    src, ours, sharded, again = (tmp_path / n for n in ("src", "ours", "sharded", "again"))
    save_random_hf_llama(src, llama31_hf_config())
    hf_to_jax.convert(src, ours)
    jax_to_hf.convert(ours, sharded, max_shard_bytes=60_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    reloaded, info = transformers.LlamaForCausalLM.from_pretrained(str(sharded), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # The index-driven reader gives back the same model, and reads only the files the index names.
    (sharded / "adapter.safetensors").write_bytes(b"not read")
    hf_to_jax.convert(sharded, again)
    jax_to_hf.convert(again, tmp_path / "single")
    single, first = read_all(tmp_path / "single"), read_all(src)
    assert all(np.array_equal(single[k], first[k]) for k in first)


def test_model_directories_may_be_relative(tmp_path, monkeypatch):
    # `make train` names its models runs/...; Orbax refuses relative paths unless we resolve them.
    monkeypatch.chdir(tmp_path)
    save_random_hf_llama(tmp_path / "src", llama31_hf_config())
    hf_to_jax.convert("src", "ours")
    model = load_model("ours")
    jax_to_hf.convert("ours", "back")
    back = read_all(tmp_path / "back")
    np.testing.assert_array_equal(back["model.embed_tokens.weight"], np.asarray(model.embed[...]))


def test_exported_smollm2_loads_with_auto_classes(smollm2_dir, smollm2_hf_dir, tmp_path):
    out = tmp_path / "smollm2-hf"
    jax_to_hf.convert(smollm2_dir, out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    reference = transformers.AutoTokenizer.from_pretrained(str(smollm2_hf_dir))
    text = "Kazan struggled with Spiegel's budget cuts./NER"
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.tie_word_embeddings and model.config.eos_token_id == 2
