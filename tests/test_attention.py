"""The attention kernels against the einsum reference on causal, padded and packed rows (the XLA path of
`jax.nn.dot_product_attention`, which cuDNN shares, and Pallas splash attention in interpret mode, on one
device and under shard_map on a mesh), the kernel each platform picks, and the chunked loss against the
plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.models import attention
from oie_jax.models.checkpoint import model_from_params
from oie_jax.models.config import preset
from oie_jax.models.llama import Llama
from oie_jax.train.loss import chunked_token_losses, token_losses

B, T, HEADS, KV_HEADS, D = 4, 128, 4, 2, 16


@pytest.fixture(autouse=True)
def float32_matmuls():
    """Float32 comparisons at 1e-5 need float32 matmuls: GPUs default to TF32 (CPUs need nothing)."""
    with jax.default_matmul_precision("highest"):
        yield


def rows(kind: str) -> np.ndarray:
    """Segment ids (B, T): one sequence per row, right padding, or packed segments with padding."""
    segments = np.ones((B, T), np.int32)
    if kind in ("padded", "packed"):
        for row, end in enumerate((128, 100, 37, 64)):
            segments[row, end:] = 0
    if kind == "packed":
        segments[:, 20:] = np.where(segments[:, 20:] > 0, 2, 0)
        segments[:, 50:] = np.where(segments[:, 50:] > 0, 3, 0)
    return segments


def qkv(seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((B, T, heads, D)), jnp.float32)
                 for heads in (HEADS, KV_HEADS, KV_HEADS))


def outputs(kind: str, implementation: str, q, k, v):
    segments = jnp.asarray(rows(kind))
    slots = jnp.arange(T, dtype=jnp.int32)
    mask = attention.AttentionMask(segments, segments, slots, slots)
    if implementation == "dot_product":
        return attention.dot_product(q, k, v, mask, "xla")
    return attention.attend(q, k, v, mask, implementation)


@pytest.mark.parametrize("kind", ["causal", "padded", "packed"])
@pytest.mark.parametrize("implementation", ["dot_product", "splash"])
def test_kernels_equal_the_reference(kind, implementation):
    q, k, v = qkv()
    real = rows(kind) > 0  # padding queries feed nothing; kernels may differ there
    reference = outputs(kind, "xla", q, k, v)
    np.testing.assert_allclose(np.asarray(outputs(kind, implementation, q, k, v))[real],
                               np.asarray(reference)[real], atol=1e-5, rtol=0)

    def loss(implementation, q, k, v):
        return (outputs(kind, implementation, q, k, v) * jnp.asarray(real)[:, :, None, None]).sum()

    expected = jax.grad(loss, argnums=(1, 2, 3))("xla", q, k, v)
    for got, want in zip(jax.grad(loss, argnums=(1, 2, 3))(implementation, q, k, v), expected):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


ON_GPU = jax.devices()[0].platform == "gpu"


@pytest.mark.skipif(not ON_GPU, reason="cuDNN's fused attention runs on a GPU only (its XLA path is tested above)")
@pytest.mark.parametrize("kind", ["causal", "padded", "packed"])
def test_cudnn_on_a_gpu_equals_the_reference(kind):
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv())
    real = rows(kind) > 0
    reference = outputs(kind, "xla", *(x.astype(jnp.float32) for x in (q, k, v)))
    got = outputs(kind, "cudnn", q, k, v).astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(reference)[real], atol=2e-2, rtol=2e-2)


def test_splash_under_shard_map_on_a_mesh_equals_the_reference():
    q, k, v = qkv(1)
    mesh = sharding.make_mesh((2, 2, 2))
    with jax.set_mesh(mesh), sharding.activation_rules(sharding.DEFAULT_RULES):
        split = jax.jit(lambda q, k, v: outputs("packed", "splash", q, k, v))(q, k, v)
    real = rows("packed") > 0
    np.testing.assert_allclose(np.asarray(split)[real], np.asarray(outputs("packed", "xla", q, k, v))[real],
                               atol=1e-5, rtol=0)


def test_the_model_with_splash_equals_the_model_with_xla():
    cfg = preset("tiny")
    segments = jnp.asarray(rows("packed"))
    positions = jnp.asarray(np.concatenate([np.arange(20), np.arange(30), np.arange(78)])[None].repeat(B, 0))
    tokens = jnp.asarray(np.random.default_rng(2).integers(3, cfg.vocab_size, (B, T)), jnp.int32)
    logits = {}
    for implementation in ("xla", "splash"):
        model = Llama(cfg.replace(attention=implementation), rngs=nnx.Rngs(0))
        logits[implementation] = np.asarray(model(tokens, positions, segments)[0])
    real = rows("packed") > 0
    np.testing.assert_allclose(logits["splash"][real], logits["xla"][real], atol=1e-5, rtol=0)


def test_auto_picks_by_platform_and_dtype():
    assert attention.resolve("auto", "tpu", "bfloat16") == "splash"
    assert attention.resolve("auto", "gpu", "bfloat16") == "cudnn"
    assert attention.resolve("auto", "gpu", "float32") == "xla"  # cuDNN's flash kernel takes 16-bit types
    assert attention.resolve("auto", "cpu", "bfloat16") == "xla"
    with pytest.raises(UserError, match="cudnn attention computes in bfloat16 or float16, not float32"):
        attention.resolve("cudnn", "gpu", "float32")


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_chunked_loss_and_gradients_equal_the_plain_loss(z_loss):
    cfg = preset("tiny")
    params = nnx.to_pure_dict(nnx.state(Llama(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, (B, T)), jnp.int32)
    loss_mask = jnp.asarray(rng.random((B, T)) < 0.5, jnp.int32)
    segments = jnp.asarray(rows("packed"))

    def total(params, chunk):
        model = model_from_params(cfg, params)
        hidden, _ = model.hidden_states(tokens, None, segments)
        sums = chunked_token_losses(hidden, model.logits, tokens, loss_mask, z_loss, chunk)
        return sums.cross_entropy + sums.z_loss, sums

    (plain, plain_sums), plain_grads = jax.value_and_grad(total, has_aux=True)(params, 0)
    (chunked, chunked_sums), chunked_grads = jax.value_and_grad(total, has_aux=True)(params, 32)
    model = model_from_params(cfg, params)
    direct = token_losses(model(tokens, None, segments)[0], tokens, loss_mask, z_loss)
    np.testing.assert_allclose(plain_sums, direct, rtol=1e-6)
    np.testing.assert_allclose(chunked, plain, rtol=1e-6)
    np.testing.assert_allclose(chunked_sums.tokens, plain_sums.tokens)
    for got, want in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(plain_grads)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
