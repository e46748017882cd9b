"""A tiny LLaMA with a SentencePiece tokenizer (trained here, byte fallback: the 13B OIELLM's kind) through
training and constrained evaluation. Training encodes the answer alone, so the model learns to start it
with "▁Travel"; constrained decoding must let that first space through (the decoder drops it), give
well-formed outputs, and change no token of an output that free decoding already wrote well-formed."""

import pytest

from oie_jax.data import format as fmt
from oie_jax.data.labels import model_label_sets
from oie_jax.data.sources.registry import write_jsonl
from oie_jax.data.tokenizer import load_tokenizer
from oie_jax.eval.evaluate import evaluate
from oie_jax.infer import constrain
from oie_jax.infer import generate as gen
from oie_jax.infer.predict import prompt_tokens, record_constraints
from oie_jax.models.checkpoint import load_model
from oie_jax.train.runs import train
from tests.test_token_bytes import train_sentencepiece
from tests.test_train_learned import LEARN_STEPS, visits
from tests.test_train_loop import tiny


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sentencepiece-run")
    (directory / "tokenizer").mkdir()
    train_sentencepiece(directory / "tokenizer")
    records = visits()
    write_jsonl(records[:48], directory / "train.jsonl")
    write_jsonl(records[48:], directory / "dev.jsonl")
    config = tiny(**{"model.tokenizer": str(directory / "tokenizer"), "data.train": str(directory / "train.jsonl"),
                     "data.dev": str(directory / "dev.jsonl"), "data.seq_len": 64, "data.batch_size": 16,
                     "train.steps": LEARN_STEPS, "train.lr": 4e-3, "train.warmup_fraction": 0.1,
                     "train.decay": "cosine", "eval.every": 0, "checkpoint.every": LEARN_STEPS,
                     "export.model": True, "log.every": 50})
    assert train(config, directory / "run").step == LEARN_STEPS
    return directory / "run" / "model", records[48:]


def test_constrained_outputs_of_a_sentencepiece_model_are_well_formed_and_keep_valid_free_ones(learned):
    model_dir, dev = learned
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.strips_leading_space()
    model, labels = load_model(model_dir), model_label_sets(model_dir)
    prompts, eos_ids = prompt_tokens(dev, tokenizer), gen.stop_ids(model.cfg, tokenizer)
    free = gen.generate(model, prompts, 32, eos_ids=eos_ids, batch_size=16)
    constraints = record_constraints(dev, tokenizer, labels, model.cfg.vocab_size)
    constrained = gen.generate(model, prompts, 32, eos_ids=eos_ids, batch_size=16, constraints=constraints)
    pieces = tokenizer.token_bytes()
    assert all(pieces[tokens[0]].startswith(b" ") for tokens in free)  # the answer's first word: "▁Travel"
    valid = [constrain.accepts(auto, tokenizer.decode(tokens).encode())
             for auto, tokens in zip(constraints.automata, free)]
    assert sum(valid) >= len(dev) // 2, [tokenizer.decode(tokens) for tokens in free]  # it learned the format
    assert [c for ok, c in zip(valid, constrained) if ok] == [f for ok, f in zip(valid, free) if ok]  # same tokens
    outputs = [tokenizer.decode(tokens) for tokens in constrained]
    assert all(fmt.parse(output, "NER").well_formed for output in outputs), outputs
    _, scores = evaluate(model, tokenizer, dev, max_new_tokens=32, progress=False, log=lambda _: None, labels=labels)
    print(f"SentencePiece run: {sum(valid)}/{len(dev)} free outputs valid, "
          f"{sum(fmt.parse(o, 'NER').well_formed for o in outputs)}/{len(dev)} constrained well formed, "
          f"constrained F1 {scores.metric('macro/all/f1'):.3f}")
