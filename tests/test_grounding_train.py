"""The grounding train step: sharded over eight virtual devices it equals one device; frozen parts get
no optimizer state and do not move; the loss falls on a fixed batch."""

import jax
import numpy as np
import optax
import pytest

from oie_jax import sharding
from oie_jax.data.grounding import GroundingPipeline
from oie_jax.data.images import ImageSource
from oie_jax.data.pipeline import PipelineConfig
from oie_jax.data.sources.registry import load_source
from oie_jax.data.synth_gmner import synthesize
from oie_jax.data.tokenizer import ByteTokenizer
from oie_jax.models.config import LoraConfig, preset
from oie_jax.models.encoders import Preprocess
from oie_jax.models.grounding import GroundingConfig
from oie_jax.models.vision import ViTConfig
from oie_jax.train.grounding import parts as gt
from oie_jax.train.step import jit_on_mesh

VISION = ViTConfig("clip", image_size=64, patch_size=16, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=2, layer_norm_eps=1e-5)


def setup_for(trainable, lora=None):
    llama = preset("tiny").replace(vocab_size=264, lora=lora)
    return gt.GroundingSetup(llama, VISION, GroundingConfig(query_size=llama.hidden_size, vision_size=32, size=32),
                             trainable=trainable)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, 16, seed=2)
    records = load_source([str(out / "txt")])[1].records
    images = ImageSource(out / "images", Preprocess((64, 64), (0.5,) * 3, (0.5,) * 3, "squash"))
    pipeline = GroundingPipeline(records, ByteTokenizer(), images, PipelineConfig(seq_len=128, batch_size=8))
    return next(iter(pipeline))


def params_for(setup, seed=0):
    return {part: gt.init_part(setup, part, seed + i) for i, part in enumerate(gt.PARTS)}


def run_steps(setup, batch, mesh, steps=1, optimizer=None):
    optimizer = optimizer or optax.adam(1e-3)
    shardings = gt.state_shardings(setup, optimizer, mesh)
    parts = gt.part_shardings(setup, mesh)
    trainable, frozen = gt.split(setup, params_for(setup))
    trainable = jax.device_put(trainable, shardings.params)
    frozen = jax.device_put(frozen, gt.split(setup, parts)[1])
    state = gt.create_state(optimizer, shardings, trainable)
    rows = sharding.batch_sharding(mesh)
    step = jit_on_mesh(gt.make_train_step(setup, optimizer), mesh, in_shardings=(shardings, None, rows),
                       out_shardings=(shardings, None), donate_argnums=0)
    history = []
    for _ in range(steps):
        state, metrics = step(state, frozen, jax.device_put(batch, rows))
        history.append(jax.device_get(metrics))
    return state, frozen, history


def test_sharded_step_equals_one_device(batch):
    setup = setup_for(("llama", "head"))
    sgd = optax.sgd(0.1)  # an update proportional to the gradient: Adam's first step is its sign, where any
    # rounding difference of a near-zero gradient flips a whole step
    one, _, (metrics_one,) = run_steps(setup, batch, sharding.mesh_from_config((1, 1, 1), devices=jax.devices()[:1]),
                                       optimizer=sgd)
    eight, _, (metrics_eight,) = run_steps(setup, batch, sharding.make_mesh((2, 4, 1)), optimizer=sgd)
    assert metrics_one["entities"] > 0 and metrics_one["kl"] > 0 and metrics_one["l1"] > 0
    for name in ("loss", "kl", "l1", "giou", "lm_loss", "grad_norm"):
        np.testing.assert_allclose(metrics_eight[name], metrics_one[name], rtol=2e-5, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), jax.device_get(eight.params),
                 jax.device_get(one.params))


def test_frozen_parts_have_no_optimizer_state_and_the_loss_falls(batch):
    setup = setup_for(("head",))
    mesh = sharding.make_mesh((1, 8, 1))
    state, frozen, history = run_steps(setup, batch, mesh, steps=30)
    assert set(state.params) == {"head"} and set(frozen) == {"llama", "vision"}
    leaves = jax.tree.leaves(state.opt_state)
    head_size = sum(x.size for x in jax.tree.leaves(state.params))
    assert sum(x.size for x in leaves) <= 2 * head_size + 8  # Adam's two moments of the head, and counters
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_lora_llama_trains_its_adapters_alone_sharded_like_one_device(batch):
    setup = setup_for(("llama", "head"), LoraConfig(rank=4, alpha=8.0))
    sgd = optax.sgd(0.1)
    one, frozen, history = run_steps(setup, batch, sharding.mesh_from_config((1, 1, 1), devices=jax.devices()[:1]),
                                     steps=3, optimizer=sgd)
    assert set(one.params) == {"llama", "head"} and set(frozen) == {"llama", "vision"}
    assert {name.rsplit("_lora_", 1)[-1] for name in flat_names(one.params["llama"])} == {"a", "b"}
    assert not any("_lora_" in name for name in flat_names(frozen["llama"]))  # the base, whole and apart
    assert history[0]["lm_loss"] > 0 and history[-1]["loss"] < history[0]["loss"]
    eight, _, eight_history = run_steps(setup, batch, sharding.make_mesh((2, 4, 1)), steps=3, optimizer=sgd)
    np.testing.assert_allclose([h["loss"] for h in eight_history], [h["loss"] for h in history], rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), jax.device_get(eight.params),
                 jax.device_get(one.params))


def flat_names(tree) -> list[str]:
    return [str(path[-1].key) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
