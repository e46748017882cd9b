"""Our Flax LLaMA against transformers' LlamaForCausalLM built from the same config.json and weights."""

import numpy as np
import pytest
import torch
import transformers

from oie_jax.convert import hf_to_jax
from oie_jax.models.checkpoint import load_model
from tests.helpers import llama31_hf_config, random_tokens, save_random_hf_llama


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def tiny_pair(request, tmp_path_factory):
    hf_dir = tmp_path_factory.mktemp("hf")
    torch_model = save_random_hf_llama(hf_dir, llama31_hf_config(tie=request.param))
    ours_dir = tmp_path_factory.mktemp("ours")
    hf_to_jax.convert(hf_dir, ours_dir)
    return torch_model, load_model(ours_dir)


def torch_logits(model, tokens, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long), **kwargs).logits.float().numpy()


def test_tiny_llama31_logits_match_transformers(tiny_pair):
    torch_model, model = tiny_pair
    assert model.cfg.rope_scaling["original_max_position_embeddings"] < 96  # scaling is exercised
    tokens = random_tokens((2, 96), model.cfg.vocab_size)
    ours, _ = model(tokens)
    ref = torch_logits(torch_model, tokens)
    assert np.abs(ref).max() > 1.0  # logits of a real spread, not near zero
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_padded_batch_matches_transformers(tiny_pair):
    torch_model, model = tiny_pair
    tokens = random_tokens((2, 40), model.cfg.vocab_size, seed=1)
    mask = np.ones_like(tokens)
    mask[1, :13] = 0  # left padding on the second row
    positions = np.maximum(mask.cumsum(1) - 1, 0)
    ours, _ = model(tokens, positions, mask)
    ref = torch_logits(torch_model, tokens, attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], ref[real], atol=1e-4, rtol=0)


def test_packed_row_equals_separate_passes(tiny_pair):
    _, model = tiny_pair
    lengths = [11, 23, 17]
    segments = [random_tokens((1, n), model.cfg.vocab_size, seed=n) for n in lengths]
    packed = np.concatenate(segments, axis=1)
    pad = 5
    tokens = np.pad(packed, ((0, 0), (0, pad)))
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(pad)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(pad)])[None]
    ours, _ = model(tokens, positions.astype(np.int32), segment_ids.astype(np.int32))
    start = 0
    for segment, n in zip(segments, lengths):
        alone, _ = model(segment)
        np.testing.assert_allclose(np.asarray(ours)[0, start:start + n], np.asarray(alone)[0], atol=1e-4, rtol=0)
        start += n


def test_no_attention_across_segments(tiny_pair):
    """Changing one segment's tokens leaves the other segments' logits bit-identical."""
    _, model = tiny_pair
    tokens = random_tokens((1, 30), model.cfg.vocab_size, seed=3)
    segment_ids = np.repeat([[1, 2, 3]], 10, axis=1).astype(np.int32)
    positions = np.tile(np.arange(10), 3)[None].astype(np.int32)
    changed = tokens.copy()
    changed[0, 10:20] = random_tokens((1, 10), model.cfg.vocab_size, seed=4)
    a, _ = model(tokens, positions, segment_ids)
    b, _ = model(changed, positions, segment_ids)
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_array_equal(a[0, :10], b[0, :10])
    np.testing.assert_array_equal(a[0, 20:], b[0, 20:])
    assert np.abs(a[0, 10:20] - b[0, 10:20]).max() > 1e-3


def test_rope_frequencies_match_transformers(tiny_pair):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from oie_jax.models import rope

    _, model = tiny_pair
    cfg = model.cfg
    hf = transformers.LlamaConfig(**{k: v for k, v in cfg.to_hf_config().items() if k != "architectures"})
    reference = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")[0].numpy()
    ours = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    np.testing.assert_allclose(ours, reference, rtol=3e-7)  # float32, within an ulp
    # All three bands of the llama3 scaling occur: kept, interpolated, divided by factor.
    plain = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta)
    ratio = plain / ours
    assert (ratio == 1).any() and (ratio == cfg.rope_scaling["factor"]).any()
    assert ((ratio > 1) & (ratio < cfg.rope_scaling["factor"])).any()


def test_cache_without_explicit_positions(tiny_pair):
    from oie_jax.models.llama import init_cache

    _, model = tiny_pair
    tokens = random_tokens((2, 12), model.cfg.vocab_size, seed=9)
    full, _ = model(tokens)
    _, cache = model(tokens[:, :8], cache=init_cache(model.cfg, 2, 16))
    step, _ = model(tokens[:, 8:9], cache=cache)  # positions default to the next slot
    np.testing.assert_allclose(np.asarray(step)[:, 0], np.asarray(full)[:, 8], atol=1e-5, rtol=0)


def test_cached_decoding_equals_full_forward(tiny_pair):
    from oie_jax.models.llama import init_cache

    _, model = tiny_pair
    tokens = random_tokens((2, 24), model.cfg.vocab_size, seed=5)
    full, _ = model(tokens)
    cache = init_cache(model.cfg, 2, 32)
    prefix, cache = model(tokens[:, :16], cache=cache)
    steps = [prefix]
    for t in range(16, 24):
        logits, cache = model(tokens[:, t:t + 1], np.full((2, 1), t, np.int32), cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate([np.asarray(s) for s in steps], axis=1), np.asarray(full),
                               atol=1e-5, rtol=0)


def test_remat_changes_no_numbers(tiny_pair):
    import jax
    from flax import nnx

    from oie_jax.models.checkpoint import model_from_params

    _, model = tiny_pair
    params = nnx.to_pure_dict(nnx.state(model))
    tokens = random_tokens((2, 20), model.cfg.vocab_size, seed=6)

    def loss_and_grads(remat):
        def loss(p):
            return model_from_params(model.cfg.replace(remat=remat), p)(tokens)[0].std()
        return jax.value_and_grad(loss)(params)

    base_loss, base_grads = loss_and_grads("none")
    for policy in ("full", "dots"):
        value, grads = loss_and_grads(policy)
        np.testing.assert_allclose(value, base_loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bfloat16_compute_stays_close(tiny_pair):
    _, model = tiny_pair
    from flax import nnx

    from oie_jax.models.checkpoint import model_from_params

    tokens = random_tokens((1, 32), model.cfg.vocab_size, seed=8)
    full = np.asarray(model(tokens)[0])
    half_model = model_from_params(model.cfg.replace(dtype="bfloat16"), nnx.to_pure_dict(nnx.state(model)))
    half = np.asarray(half_model(tokens)[0])
    assert half.dtype == np.float32  # logits stay float32
    assert np.sqrt(np.mean((half - full) ** 2) / np.mean(full**2)) < 0.03  # bfloat16 has 8 bits of mantissa
    assert (half.argmax(-1) == full.argmax(-1)).mean() > 0.9
