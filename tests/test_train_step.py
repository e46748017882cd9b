"""The train step: gradient accumulation equals one big batch; sharded runs equal the single-device run."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from oie_jax import sharding
from oie_jax.models.checkpoint import model_from_params
from oie_jax.models.config import preset
from oie_jax.models.llama import Llama
from oie_jax.train.loss import token_losses
from oie_jax.train.optimizer import adamw, learning_rate_schedule
from oie_jax.train.step import init_state, jit_on_mesh, make_train_step, state_shardings

CFG = preset("tiny")


def random_batch(rows=8, length=32, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    cut = rng.integers(8, length - 8, rows)  # two packed segments per row
    slots = np.arange(length)
    segment_ids = np.where(slots < cut[:, None], 1, 2).astype(np.int32)
    positions = np.where(slots < cut[:, None], slots, slots - cut[:, None]).astype(np.int32)
    loss_mask = (rng.random((rows, length)) < 0.5).astype(np.int32)
    tokens = rng.integers(3, CFG.vocab_size, (rows, length)).astype(np.int32)
    return {"tokens": tokens, "loss_mask": loss_mask, "segment_ids": segment_ids, "positions": positions}


def fresh_params():
    return nnx.to_pure_dict(nnx.state(Llama(CFG, rngs=nnx.Rngs(0))))


def optimizer():
    return adamw(learning_rate_schedule(1e-3, 10, 2), weight_decay=0.1, clip_norm=1.0)


def test_gradient_accumulation_equals_one_batch():
    batch = random_batch()
    results = []
    for parts in (1, 4):
        opt = optimizer()
        step = jax.jit(make_train_step(CFG, opt, micro_batches=parts))
        state, metrics = step(init_state(fresh_params(), opt), batch)
        results.append((state, metrics))
    (one, m1), (four, m4) = results
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@functools.cache
def run(mesh_shape, steps=5):
    opt = optimizer()
    train_step = make_train_step(CFG, opt)
    state = init_state(fresh_params(), opt)
    batches = [random_batch(seed=s) for s in range(steps)]
    if mesh_shape is None:
        step = jax.jit(train_step)
    else:
        mesh = sharding.make_mesh(mesh_shape)
        shardings = state_shardings(CFG, opt, mesh)
        rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
        state = jax.device_put(state, shardings)
        batches = [jax.device_put(b, rows) for b in batches]
        # jit_on_mesh: the trainer's path, activation constraints included
        step = jit_on_mesh(train_step, mesh, in_shardings=(shardings, rows), out_shardings=(shardings, None),
                           donate_argnums=0)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)],
                         ids=["data8", "fsdp8", "fsdp4-tensor2", "data2-fsdp2-tensor2"])
def test_sharded_steps_equal_single_device(mesh_shape):
    reference_losses, reference_params = run(None)
    losses, params = run(mesh_shape)
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    assert reference_losses[-1] < reference_losses[0]  # it learns the batches
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_metrics_keep_the_z_loss_apart_and_count_real_tokens():
    batch = random_batch()
    batch["segment_ids"][:, -5:] = 0  # padding at the end of every row
    params = fresh_params()
    opt = optimizer()
    _, metrics = jax.jit(make_train_step(CFG, opt, z_loss=1e-2))(init_state(params, opt), batch)
    logits, _ = model_from_params(CFG, params)(batch["tokens"], batch["positions"], batch["segment_ids"])
    plain = token_losses(logits, batch["tokens"], batch["loss_mask"])
    with_z = token_losses(logits, batch["tokens"], batch["loss_mask"], z_loss=1e-2)
    np.testing.assert_allclose(metrics["loss"], plain.cross_entropy / plain.tokens, rtol=1e-6)
    np.testing.assert_allclose(metrics["z_loss"], with_z.z_loss / with_z.tokens, rtol=1e-6)
    assert float(metrics["z_loss"]) > 0 and float(metrics["target_tokens"]) == float(plain.tokens)
    assert int(metrics["tokens"]) == int((batch["segment_ids"] > 0).sum()) == 8 * 27


def test_a_static_loss_scale_gives_the_same_update():
    batch = random_batch()
    results = []
    for scale in (0.0, 1024.0):
        opt = optimizer()
        state, metrics = jax.jit(make_train_step(CFG, opt, loss_scale=scale))(init_state(fresh_params(), opt), batch)
        results.append((state.params, metrics))
    np.testing.assert_allclose(results[1][1]["grad_norm"], results[0][1]["grad_norm"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(results[1][0]), jax.tree.leaves(results[0][0])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
