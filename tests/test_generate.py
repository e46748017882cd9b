"""KV-cache generation on a tiny random LLaMA-3.1-shaped model against transformers, plus sampling."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from oie_jax import cli, sharding
from oie_jax.convert import hf_to_jax
from oie_jax.data.format import Record, render_input
from oie_jax.data.tokenizer import load_tokenizer
from oie_jax.errors import UserError
from oie_jax.infer import generate as gen
from oie_jax.infer.predict import generate_outputs
from oie_jax.models.checkpoint import abstract_model, load_config, load_model, load_params
from tests.helpers import llama31_hf_config, random_tokens, save_random_hf_llama, save_word_tokenizer

NO_EOS = ()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf_dir, ours = tmp_path_factory.mktemp("hf"), tmp_path_factory.mktemp("ours")
    torch_model = save_random_hf_llama(hf_dir, llama31_hf_config(), seed=7)
    hf_to_jax.convert(hf_dir, ours)
    return torch_model, load_model(ours)


def prompts_of(lengths, vocab=320):
    return [random_tokens((1, n), vocab, seed=n)[0].tolist() for n in lengths]


def test_greedy_matches_transformers_with_mixed_lengths(pair):
    torch_model, model = pair
    prompts = prompts_of([3, 17, 9, 30])
    width = max(map(len, prompts))
    ids = torch.zeros((4, width), dtype=torch.long)
    mask = torch.zeros((4, width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    with torch.no_grad():
        ref = torch_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[:, width:].numpy()
    ours = gen.generate(model, prompts, max_new_tokens=24, eos_ids=NO_EOS)
    assert [len(o) for o in ours] == [24] * 4
    np.testing.assert_array_equal(np.array(ours), ref)


def test_each_row_stops_at_its_own_eos(pair):
    _, model = pair
    prompts = prompts_of([5, 12, 8])
    free = gen.generate(model, prompts, max_new_tokens=16, eos_ids=NO_EOS)
    eos_ids = (free[0][3], free[1][6])  # two EOS ids, met at different steps
    stopped = gen.generate(model, prompts, max_new_tokens=16, eos_ids=eos_ids)
    for row, tokens in zip(free, stopped):
        hits = [i for i, t in enumerate(row) if t in eos_ids]
        assert tokens == (row[:hits[0] + 1] if hits else row)
    assert len(stopped[0]) <= 4 and len(stopped[1]) <= 7


def test_compiled_once_per_bucket(pair):
    _, model = pair
    gen.generate(model, prompts_of([5, 9]), max_new_tokens=4, eos_ids=NO_EOS)
    before = gen.trace_count()
    gen.generate(model, prompts_of([6, 11]), max_new_tokens=4, eos_ids=NO_EOS)  # same (2, 16) bucket
    gen.generate(model, prompts_of([6, 11]), max_new_tokens=13, eos_ids=NO_EOS)  # same room for 16 new tokens
    assert gen.trace_count() == before
    hot = gen.Sampling(temperature=0.7, top_p=0.9, seed=3)
    gen.generate(model, prompts_of([2, 16]), max_new_tokens=4, eos_ids=NO_EOS, sampling=hot)  # sampling compiles
    gen.generate(model, prompts_of([3, 12]), max_new_tokens=4, eos_ids=NO_EOS,
                 sampling=gen.Sampling(temperature=1.3, top_p=0.5, seed=4))  # its values are traced
    assert gen.trace_count() == before + 1
    gen.generate(model, prompts_of([5, 9, 12, 3, 7]), max_new_tokens=4, eos_ids=NO_EOS)  # batch bucket 8
    gen.generate(model, prompts_of([20]), max_new_tokens=4, eos_ids=NO_EOS)  # batch 1, length bucket 24
    assert gen.trace_count() == before + 3


def test_each_row_stops_at_its_own_budget_and_budgets_share_a_bucket(pair):
    _, model = pair
    prompts = prompts_of([5, 12, 8])
    alone = [gen.generate(model, [p], max_new_tokens=n, eos_ids=NO_EOS)[0] for p, n in zip(prompts, (3, 17, 9))]
    assert [len(tokens) for tokens in alone] == [3, 17, 9]
    before = gen.trace_count()
    assert gen.generate(model, prompts, max_new_tokens=[3, 17, 9], eos_ids=NO_EOS) == alone  # room for 24
    assert gen.generate(model, prompts, max_new_tokens=[20, 24, 11], eos_ids=NO_EOS) != alone
    assert [gen.length_bucket(n) for n in (1, 16, 17, 24, 25, 32, 33, 48, 49, 96, 97, 1000)] == [
        16, 16, 24, 24, 32, 32, 48, 48, 64, 96, 128, 1024]
    assert gen.trace_count() == before + 1
    with pytest.raises(UserError, match="at least 1"):
        gen.generate(model, prompts, max_new_tokens=[3, 0, 9])


def test_sampling_is_seeded_and_filters_reduce_to_greedy(pair):
    _, model = pair
    prompts = prompts_of([4, 10])
    greedy = gen.generate(model, prompts, max_new_tokens=12, eos_ids=NO_EOS)
    hot = gen.Sampling(temperature=1.5, seed=1)
    first = gen.generate(model, prompts, max_new_tokens=12, sampling=hot, eos_ids=NO_EOS)
    assert first == gen.generate(model, prompts, max_new_tokens=12, sampling=hot, eos_ids=NO_EOS)
    other = gen.generate(model, prompts, max_new_tokens=12, sampling=gen.Sampling(temperature=1.5, seed=2),
                         eos_ids=NO_EOS)
    assert first != other and first != greedy
    for narrow in (gen.Sampling(temperature=1.5, top_k=1, seed=1), gen.Sampling(temperature=1.5, top_p=1e-6)):
        assert gen.generate(model, prompts, max_new_tokens=12, sampling=narrow, eos_ids=NO_EOS) == greedy


def test_a_sampled_row_draws_the_same_whatever_shares_its_batch(pair):
    _, model = pair
    prompts = prompts_of([4, 10, 7, 13])
    hot = gen.Sampling(temperature=1.5, seed=1)
    together = gen.generate(model, prompts, max_new_tokens=12, sampling=hot, eos_ids=NO_EOS, batch_size=4)
    alone = [gen.generate(model, [prompt], max_new_tokens=12, sampling=hot, eos_ids=NO_EOS, row_seeds=[(1, i)])[0]
             for i, prompt in enumerate(prompts)]
    assert together == alone
    salted = gen.generate(model, [prompts[0]] * 2, max_new_tokens=12, sampling=hot, eos_ids=NO_EOS,
                          row_seeds=[(1, 0), (1, 5)])
    assert salted[0] == together[0] and salted[1] != salted[0]  # another salt, another draw


def test_the_host_sees_each_step_as_it_is_made_and_can_end_a_row_there(pair):
    _, model = pair
    prompts = prompts_of([4, 10, 7])
    whole = gen.generate(model, prompts, max_new_tokens=12, eos_ids=NO_EOS, batch_size=4)
    seen = []

    def on_tokens(indices, step, made):
        seen.append((step, list(indices), made.tolist()))
        return [index == 1 and step == 3 for index in indices]  # prompt 1 ends at its fourth token

    ended = gen.generate(model, prompts, max_new_tokens=12, eos_ids=NO_EOS, batch_size=4, on_tokens=on_tokens)
    assert ended[1] == whole[1][:4] and ended[0] == whole[0] and ended[2] == whole[2]
    assert [step for step, _, _ in seen] == list(range(12))  # in order, while the loop ran
    order = seen[0][1]
    assert [made[order.index(0)] for _, _, made in seen] == whole[0]


def test_sample_frequencies_follow_filtered_softmax():
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05], jnp.float32))
    rows = jnp.tile(logits, (20000, 1))

    def frequencies(top_k, top_p):
        filters = gen.filters_of(gen.Sampling(temperature=1.0, top_k=top_k, top_p=top_p), 4)
        tokens = gen.sample_tokens(rows, jax.random.key(0), jnp.float32(1.0), jnp.float32(top_p), filters)
        return np.bincount(np.asarray(tokens), minlength=4) / rows.shape[0]

    np.testing.assert_allclose(frequencies(0, 1.0), [0.5, 0.3, 0.15, 0.05], atol=0.015)
    np.testing.assert_allclose(frequencies(2, 1.0), [0.625, 0.375, 0, 0], atol=0.015)
    # top_p 0.7: 0.5 alone is short of 0.7, so {0, 1} are kept.
    np.testing.assert_allclose(frequencies(0, 0.7), [0.625, 0.375, 0, 0], atol=0.015)
    np.testing.assert_allclose(frequencies(3, 0.7), [0.625, 0.375, 0, 0], atol=0.015)  # both filters
    np.testing.assert_allclose(frequencies(10, 1.0), [0.5, 0.3, 0.15, 0.05], atol=0.015)  # k > vocab: off


def test_bad_requests(pair):
    _, model = pair
    with pytest.raises(UserError, match="empty prompt"):
        gen.generate(model, [[5], []], max_new_tokens=2)
    with pytest.raises(UserError, match="sampling"):
        gen.Sampling(top_p=0.0)
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        gen.generate(model, [[5, model.cfg.vocab_size]], max_new_tokens=2)
    with pytest.raises(UserError, match="at least 1"):
        gen.generate(model, [[5]], max_new_tokens=2, batch_size=0)
    with pytest.raises(UserError, match="at least 1"):
        gen.generate(model, [[5]], max_new_tokens=0)


def test_generation_config_stop_ids_end_every_generation(tmp_path, capsys):
    """Llama 3 Instruct names <|eot_id|> in generation_config.json only: `generate` and evaluation both stop
    there, as transformers does."""
    hf_dir, ours = tmp_path / "hf", tmp_path / "ours"
    torch_model = save_random_hf_llama(hf_dir, llama31_hf_config(eos_token_id=2), seed=7)
    save_word_tokenizer(hf_dir, 320)
    tokenizer = load_tokenizer(hf_dir)
    record = Record(text="t5 t17 t100 t33 t250", task="NER")
    prompt = render_input(record.text, record.task)  # what evaluation feeds; "t250/NER" is the unknown word t0
    ids = torch.tensor([tokenizer.encode(prompt)])

    def reference_generate(model, **kwargs):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                 do_sample=False, pad_token_id=0, **kwargs)
        return out[0, ids.shape[1]:].tolist()

    free = reference_generate(torch_model, eos_token_id=None)
    end_of_turn = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i] and t != 2)
    config = json.loads((hf_dir / "generation_config.json").read_text())
    (hf_dir / "generation_config.json").write_text(json.dumps(dict(config, eos_token_id=[2, end_of_turn])))
    stopped = reference_generate(transformers.LlamaForCausalLM.from_pretrained(str(hf_dir)).eval())
    assert stopped == free[:free.index(end_of_turn) + 1]  # transformers reads generation_config.json

    hf_to_jax.convert(hf_dir, ours)
    assert load_model(ours).cfg.eos_token_ids == (2, end_of_turn)
    assert cli.main(["generate", "--model", str(ours), "--prompt", prompt, "--max-new-tokens", "16"]) == 0
    assert capsys.readouterr().out.strip() == tokenizer.decode(stopped)
    outputs, _ = generate_outputs(load_model(ours), load_tokenizer(ours), [record], max_new_tokens=16, progress=False)
    assert outputs == [tokenizer.decode(stopped)]


def test_a_model_too_large_for_one_device_is_split_over_all_and_generates_the_same(pair, tmp_path):
    _, model = pair
    hf_dir, ours = tmp_path / "hf", tmp_path / "ours"
    save_random_hf_llama(hf_dir, llama31_hf_config(), seed=7)
    hf_to_jax.convert(hf_dir, ours)
    state = nnx.state(abstract_model(load_config(ours)))
    whole = sharding.inference_shardings(state)  # CPUs share the host's memory: one device
    assert {type(s) for s in jax.tree.leaves(whole)} == {jax.sharding.SingleDeviceSharding}
    split = sharding.inference_shardings(state, device_memory=10_000)  # a device of 10 kB
    assert {s.mesh.size for s in jax.tree.leaves(split)} == {8}
    prompts = prompts_of([3, 17, 9])
    sharded = load_model(ours, shardings=split)
    assert gen.generate(sharded, prompts, 12, eos_ids=NO_EOS) == gen.generate(model, prompts, 12, eos_ids=NO_EOS)
    # An export reads the parameters into host memory, onto no device at all.
    params = load_params(ours, load_config(ours))
    assert all(type(leaf) is np.ndarray for leaf in jax.tree.leaves(params))
