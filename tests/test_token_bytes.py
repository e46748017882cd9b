"""Each tokenizer family's token bytes (what constrained decoding runs through its automaton) against the
family's own decoder: byte-level BPE (SmolLM2, the real Llama 3 tokenizer.json), a SentencePiece model
trained here with byte fallback (Llama 2's kind, the 13B OIELLM's), and the same model as a Hugging Face
tokenizer.json (Metaspace and byte-fallback decoders)."""

import pytest

from oie_jax.data.sample import load_sample
from oie_jax.data.tokenizer import load_tokenizer
from tests.test_tokenizer import sample_strings

SP_VOCAB = 512  # the tiny preset's vocabulary: 3 specials, 256 byte tokens, 253 pieces


def train_sentencepiece(directory, vocab_size: int = SP_VOCAB):
    """A SentencePiece BPE model of the sample corpus's English records with byte fallback, Llama 2's settings
    (BOS 1, EOS 2, no normalisation): Japanese, Chinese and emoji become <0xNN> byte tokens."""
    import sentencepiece

    records = [r for r in load_sample() if r.language == "en"]
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(line for r in records for line in (r.text, r.label, *(i[-1] for i in r.items))),
                      encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        bos_id=1, eos_id=2, unk_id=0, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False)
    corpus.unlink()
    (directory / "tokenizer.vocab").unlink()
    return directory / "tokenizer.model"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, request):
    import transformers

    from oie_jax.assets import llama3_tokenizer_json

    sp_dir = tmp_path_factory.mktemp("sentencepiece")
    sp_model = train_sentencepiece(sp_dir)
    hf_dir = tmp_path_factory.mktemp("sentencepiece-hf")
    transformers.LlamaTokenizerFast.from_pretrained(str(sp_dir), legacy=False).save_pretrained(str(hf_dir))
    return {"smollm2": load_tokenizer(request.getfixturevalue("smollm2_hf_dir")),
            "llama3": load_tokenizer(llama3_tokenizer_json()),
            "sentencepiece": load_tokenizer(sp_model),
            "sentencepiece-hf": load_tokenizer(hf_dir / "tokenizer.json")}


@pytest.mark.parametrize("name,strips", [("smollm2", False), ("llama3", False), ("sentencepiece", True),
                                         ("sentencepiece-hf", True)])
def test_token_bytes_spell_what_the_decoder_writes(tokenizers, name, strips):
    tokenizer = tokenizers[name]
    pieces = tokenizer.token_bytes()
    assert len(pieces) == tokenizer.vocab_size
    assert tokenizer.strips_leading_space() == strips
    strings = [s for s in sample_strings(300, seed=3) if s.strip()]
    used = set()
    for text in strings:
        ids = tokenizer.encode(text, add_special_tokens=False)
        used.update(ids)
        joined = b"".join(pieces[i] for i in ids)
        if strips:  # the dummy prefix: the first word's "▁" is a space the decoder drops
            assert joined.startswith(b" ")
            joined = joined[1:]
        assert joined.decode("utf-8", errors="replace") == tokenizer.decode(ids), (text, ids)
    if name.startswith("sentencepiece"):  # the strings went through byte fallback too
        assert sum(1 for i in used if len(pieces[i]) == 1 and pieces[i][0] >= 0x80) >= 10
