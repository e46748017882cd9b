"""Generation-based evaluation and extraction: a tiny random LLaMA for compile counts and the API, and
one end-to-end run of `oie-jax eval`, `score` and `extract` on the real SmolLM2."""

import json

import pytest

from oie_jax import cli
from oie_jax.convert import hf_to_jax
from oie_jax.data.format import Record, render
from oie_jax.data.sample import load_sample
from oie_jax.data.tokenizer import Tokenizer
from oie_jax.errors import UserError
from oie_jax.eval.evaluate import evaluate
from oie_jax.infer.extract import extract
from oie_jax.models.checkpoint import load_model
from tests.helpers import llama31_hf_config, save_random_hf_llama
from tests.metrics_reference import reference_metrics


class Bytes(Tokenizer):
    """UTF-8 bytes after pad 0, BOS 1 and EOS 2: enough text for a random 320-token model."""

    pad_id, bos_id, eos_id, vocab_size = 0, 1, 2, 259

    def encode(self, text, add_special_tokens=True):
        return [1] * add_special_tokens + [b + 3 for b in text.encode()]

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf_dir, ours = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("ours")
    save_random_hf_llama(hf_dir, llama31_hf_config(), seed=3)
    hf_to_jax.convert(hf_dir, ours)
    return load_model(ours)


def short_records() -> list[Record]:
    texts = ["Ann met Bob.", "Rome is old.", "Tokyo is big and busy.", "Paris in spring is lovely, they say.",
             "Kyoto", "Lima has the sea on one side and the desert on the other."]
    return [Record(text=t, task="NER", label="Travel", items=(), id=f"r{i}", subset="SCNM", language="en")
            for i, t in enumerate(texts * 2)]


def test_compiled_once_per_bucket_and_scores_equal_rescoring(tiny):
    records = short_records()
    logged = []
    outputs, scores = evaluate(tiny, Bytes(), records, batch_size=4, max_new_tokens=8, progress=False,
                               log=logged.append)
    stats = scores.generation
    # 12 prompts sorted by length, in batches of 4: each bucket compiles at most once.
    assert stats.batches == 3 and 1 <= stats.buckets <= 3 and stats.compiles <= stats.buckets
    assert 0 < stats.generated_tokens <= len(records) * 8
    assert stats.tokens_per_second > 0 and logged[-1] == stats.summary()
    assert logged[0].startswith("warning: 12 of 12 gold outputs (100.0%) need more than max_new_tokens=8 tokens")
    again_outputs, again = evaluate(tiny, Bytes(), records, batch_size=4, max_new_tokens=8, progress=False,
                                    log=logged.append)
    assert again.generation.compiles == 0 and again_outputs == outputs  # greedy, and nothing recompiled


def test_extract_api_with_a_loaded_model(tiny):
    single = extract(tiny, "Ann met Bob.", task="NER", tokenizer=Bytes(), max_new_tokens=6)
    assert single.text == "Ann met Bob." and single.task == "NER" and isinstance(single.well_formed, bool)
    several = extract(tiny, ["Ann met Bob.", "Rome is old."], task="Relation Extraction", tokenizer=Bytes(),
                      max_new_tokens=6)
    assert [e.text for e in several] == ["Ann met Bob.", "Rome is old."]
    assert set(several[0].to_json()) == {"text", "task", "label", "items", "well_formed", "reason", "output"}
    with pytest.raises(UserError, match="unknown task"):
        extract(tiny, "x", task="Summarize", tokenizer=Bytes())
    with pytest.raises(UserError, match="tokenizer"):
        extract(tiny, "x", task="NER")


def test_eval_score_and_extract_commands_on_smollm2(smollm2_dir, tmp_path, capsys):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in load_sample("dev")[:8]))
    out = tmp_path / "eval"
    code = cli.main(["eval", "--model", str(smollm2_dir), "--data", str(data), "--batch-size", "8",  # one program
                     "--max-new-tokens", "12", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "compilations for" in printed and "tokens/s" in printed
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and all(set(p) >= {"id", "output"} for p in predictions)
    evaluated = json.loads((out / "scores.json").read_text())
    assert evaluated["generation"]["compiles"] <= evaluated["generation"]["buckets"]
    assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "report.md", "scores.json", "f1.png", "errors.md",
                                              "errors.json", "errors.png"}

    assert cli.main(["score", "--gold", str(data), "--pred", str(out / "predictions.jsonl"),
                     "--json", str(tmp_path / "rescored.json")]) == 0
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    assert rescored["metrics"] == evaluated["metrics"]
    # The base model does not write the format yet: with every other prediction replaced by its gold output,
    # the scores are those of the plain-Python reference, and not zero.
    golds = load_sample("dev")[:8]
    outputs = [render(g)[1] if i % 2 else p["output"] for i, (g, p) in enumerate(zip(golds, predictions))]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"id": g.id, "output": o}, ensure_ascii=False) + "\n"
                             for g, o in zip(golds, outputs)))
    assert cli.main(["score", "--gold", str(data), "--pred", str(mixed), "--json", str(tmp_path / "mixed.json")]) == 0
    _, reference = reference_metrics(golds, outputs)
    assert json.loads((tmp_path / "mixed.json").read_text())["metrics"] == pytest.approx(reference, abs=1e-6)
    assert reference["micro/wl/f1"] > 0.4
    capsys.readouterr()

    text = "Marie Curie worked in Paris."
    assert cli.main(["extract", "--model", str(smollm2_dir), "--task", "NER", "--text", text,
                     "--max-new-tokens", "8"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(line)
    assert result["text"] == text and result["task"] == "NER" and isinstance(result["well_formed"], bool)
