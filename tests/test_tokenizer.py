"""Our tokenizer wrapper against transformers.AutoTokenizer on the real Llama 3 and SmolLM2 files."""

import json
import random
import shutil

import pytest
import transformers

from oie_jax.assets import llama3_tokenizer_json
from oie_jax.data.tokenizer import ByteTokenizer, copy_tokenizer_files, load_tokenizer
from oie_jax.errors import UserError

PIECES = [
    "Marlon Brando", "On the Waterfront", "budget cuts", "the laborer class", "1954", "Kazan's", "/NER",
    "東京都", "株式会社ストックマーク", "は新宿区にある。", "カタカナ", "ｆｕｌｌｗｉｄｔｈ", "北京大学", "位于海淀区",
    "自然语言处理", "，", "。", "😀", "👩‍👩‍👧", "🇯🇵", "✨", "  ", "   ", "\t", "\n", "\n\n", " \n  ", "\u3000",
    "e.g.", "U.S.A.", "x=1;y=2", ":Person;", "https://example.org/a?b=c", "café", "naïve", "Ωμέγα", "  leading",
]


def sample_strings(n=200, seed=0) -> list[str]:
    rng = random.Random(seed)
    strings = ["", " ", "\n", "😀", "日本語"]
    while len(strings) < n:
        parts = rng.choices(PIECES, k=rng.randint(1, 12))
        strings.append("".join(p if rng.random() < 0.5 else " " + p for p in parts))
    return strings


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama3-tokenizer")
    shutil.copyfile(llama3_tokenizer_json(), directory / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|end_of_text|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("which", ["llama3", "smollm2"])
def test_matches_auto_tokenizer_on_200_strings(which, llama3_dir, request):
    directory = llama3_dir if which == "llama3" else request.getfixturevalue("smollm2_hf_dir")
    ours = load_tokenizer(directory)
    reference = transformers.AutoTokenizer.from_pretrained(str(directory))
    strings = sample_strings()
    assert len(strings) == 200
    for special in (True, False):
        expected = [reference.encode(s, add_special_tokens=special) for s in strings]
        assert ours.encode_batch(strings, add_special_tokens=special) == expected
        assert [ours.encode(s, add_special_tokens=special) for s in strings[:20]] == expected[:20]
    ids = ours.encode_batch(strings, add_special_tokens=False)
    assert ours.decode_batch(ids) == [reference.decode(i, skip_special_tokens=True) for i in ids]
    assert ours.decode_batch(ids) == strings  # byte-level BPE is lossless
    assert ours.bos_id == reference.bos_token_id and ours.eos_id == reference.eos_token_id


def test_llama3_special_ids(llama3_dir):
    tokenizer = load_tokenizer(llama3_dir)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size) == (128000, 128001, 128256)


def test_sentencepiece_model_matches_transformers(tmp_path):
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sample_strings(400, seed=1) * 3), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=600, model_type="bpe",
        bos_id=1, eos_id=2, unk_id=0, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False)  # as in Llama 2's model
    ours = load_tokenizer(tmp_path / "tokenizer.model")
    reference = transformers.LlamaTokenizer.from_pretrained(str(tmp_path))
    # transformers treats a leading space differently from sentencepiece itself; keep those out.
    strings = [s for s in sample_strings(100, seed=2) if s.strip() and s == s.lstrip()]
    assert len(strings) > 30
    expected = [reference.encode(s, add_special_tokens=False) for s in strings]
    assert [ours.encode(s, add_special_tokens=False) for s in strings] == expected
    assert [ours.encode(s) for s in strings] == [[1, *ids] for ids in expected]  # Llama 2: BOS, no EOS
    assert ours.bos_id == 1 and ours.eos_id == 2
    assert ours.decode(ours.encode("東京都 budget cuts")) == "東京都 budget cuts"


def test_a_model_directory_of_a_byte_tokenizer_run_loads_it(tmp_path):
    assert copy_tokenizer_files("bytes", tmp_path) == ["tokenizer.bytes"]
    (tmp_path / "copy").mkdir()
    copy_tokenizer_files(tmp_path, tmp_path / "copy")  # a run that starts from that model keeps it
    for directory in (tmp_path, tmp_path / "copy"):
        assert isinstance(load_tokenizer(directory), ByteTokenizer)


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json, tokenizer.model or tokenizer.bytes"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="tokenizer.json"):
        load_tokenizer(bad)
