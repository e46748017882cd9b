"""LoRA: the trainable parameters the formula gives, adapters that start at the base and merge exactly,
a step that trains the adapters only (sharded like one device), and a run whose checkpoints hold the
adapters, which resumes like an uninterrupted run, lowers dev loss and exports merged (Hugging Face)
and unmerged (peft) models that `transformers` and `peft` run to the same logits."""

import functools
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.models import lora
from oie_jax.models.checkpoint import abstract_params, load_params, model_from_params
from oie_jax.models.config import LORA_TARGETS, LoraConfig, preset
from oie_jax.train import build
from oie_jax.train.checkpointing import restore_params, shapes_by_path
from oie_jax.train.config_file import load_config_file
from oie_jax.train.export import export
from oie_jax.train.loop import Run
from oie_jax.train.optimizer import adamw, learning_rate_schedule
from oie_jax.train.runs import train
from oie_jax.train.step import (
    frozen,
    frozen_shardings,
    init_params,
    init_state,
    jit_on_mesh,
    make_train_step,
    state_shardings,
    trainable,
)
from tests.test_train_step import random_batch

CFG = preset("tiny").replace(lora=LoraConfig(rank=4, alpha=8.0))
TINY_CONFIG = "configs/tiny_debug.py"


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, rank, targets, per_layer", [
    # rank * (in + out) of each adapted projection, written out for the presets' shapes
    ("tiny", 4, LORA_TARGETS, 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))),
    ("tiny", 2, ("q", "v"), 2 * ((64 + 64) + (64 + 32))),
    ("smollm2-135m", 8, LORA_TARGETS, 8 * ((576 + 576) + 2 * (576 + 192) + (576 + 576) + 3 * (576 + 1536))),
    ("llama3-8b", 16, ("q", "k", "v", "o"), 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096))),
])
def test_trainable_parameters_are_rank_times_in_plus_out_per_adapted_projection(name, rank, targets, per_layer):
    cfg = preset(name).replace(lora=LoraConfig(rank=rank, alpha=16.0, targets=targets))
    expected = cfg.num_layers * per_layer
    assert count(trainable(cfg, abstract_params(cfg))) == expected == lora.num_adapter_params(cfg)
    assert count(frozen(cfg, abstract_params(cfg))) == cfg.num_params()  # the base, whole and untouched
    optimizer = adamw(learning_rate_schedule(1e-3, 10, 1))
    state = build.abstract_state(cfg, optimizer, state_shardings(cfg, optimizer, sharding.make_mesh((1, 1, 1))))
    assert count(state.params) == expected
    assert sum(leaf.size for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim) == 2 * expected  # Adam's moments


@functools.partial(jax.jit, static_argnums=0)
def logits(cfg, params, tokens):
    return model_from_params(cfg, params)(tokens)[0]


def test_adapters_start_at_the_base_model_and_merge_into_it_exactly():
    params = init_params(CFG, 0)
    tokens = np.arange(24).reshape(2, 12) % CFG.vocab_size
    plain = CFG.replace(lora=None)
    base_logits = logits(plain, frozen(CFG, params), tokens)
    np.testing.assert_array_equal(logits(CFG, params, tokens), base_logits)  # B = 0
    adapters = jax.tree.map(lambda a: a + 0.05 * np.random.default_rng(1).standard_normal(a.shape, np.float32),
                            trainable(CFG, params))
    params = lora.join(frozen(CFG, params), adapters)
    adapted = logits(CFG, params, tokens)
    assert float(np.abs(adapted - base_logits).max()) > 0.1
    merged_cfg, merged = lora.merge(CFG, params)
    assert merged_cfg.lora is None and not trainable(CFG, merged)
    np.testing.assert_allclose(logits(merged_cfg, merged, tokens), adapted, atol=1e-5)
    host = lora.merge(CFG, jax.tree.map(np.asarray, params))[1]  # an export merges numpy arrays on the host
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(host))
    np.testing.assert_allclose(logits(merged_cfg, host, tokens), adapted, atol=1e-5)


@functools.cache
def lora_steps(mesh_shape, steps=4):
    cfg = CFG.replace(lora=LoraConfig(rank=4, alpha=8.0, dropout=0.2))
    optimizer = adamw(learning_rate_schedule(1e-2, 10, 1))
    params = init_params(cfg, 0)
    state, base = init_state(trainable(cfg, params), optimizer), frozen(cfg, params)
    train_step = make_train_step(cfg, optimizer, seed=3)
    batches = [random_batch(seed=s) for s in range(steps)]
    if mesh_shape is None:
        step = jax.jit(train_step)
    else:
        mesh = sharding.make_mesh(mesh_shape)
        shardings = state_shardings(cfg, optimizer, mesh)
        base_shardings = frozen_shardings(cfg, mesh)
        rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
        state, base = jax.device_put(state, shardings), jax.device_put(base, base_shardings)
        batches = [jax.device_put(b, rows) for b in batches]
        step = jit_on_mesh(train_step, mesh, in_shardings=(shardings, rows, base_shardings),
                           out_shardings=(shardings, None), donate_argnums=0)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch, base)
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (2, 2, 2)], ids=["fsdp4-tensor2", "data2-fsdp2-tensor2"])
def test_a_lora_step_trains_the_adapters_alone_and_sharded_equals_one_device(mesh_shape):
    losses, adapters = lora_steps(None)
    assert set(jax.tree.leaves(jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key[-7:], adapters))) == {
        "_lora_a", "_lora_b"}
    assert losses[-1] < losses[0]
    assert min(float(np.abs(b).max()) for b in jax.tree.leaves(lora.split(adapters)[0]) if b.ndim) > 0
    sharded_losses, sharded = lora_steps(mesh_shape)
    np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(adapters)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def lora_config(**changes):
    config = load_config_file(TINY_CONFIG)
    config.data.seq_len, config.data.batch_size = 128, 8
    config.train.steps, config.train.lr = 6, 1e-2
    config.train.lora.rank, config.train.lora.alpha, config.train.lora.dropout = 4, 8.0, 0.1
    config.checkpoint.every = config.eval.every = 3
    config.export.model = True
    for name, value in changes.items():
        section, field = name.split("__")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora-run")
    return workdir, train(lora_config(), workdir)


def test_a_lora_run_checkpoints_only_the_adapters_and_lowers_dev_loss(lora_run):
    workdir, outcome = lora_run
    assert outcome.dev_losses[6] < outcome.dev_losses[0]
    for path in (workdir / "checkpoints" / "6" / "state", workdir / "best" / "6" / "params"):
        names = list(shapes_by_path(ocp.StandardCheckpointer().metadata(path).item_metadata.tree))
        weights = [n for n in names if not n.endswith(("step", "count"))]
        assert weights and all(lora.is_adapter(n.split("/")[-1]) for n in weights), names


def test_a_resumed_lora_run_equals_the_uninterrupted_one(lora_run, tmp_path):
    _, uninterrupted = lora_run

    def stop_after_step_4(step, metrics):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption: the run saves the step it is at

    config = lora_config(export__model=False, data__dev="", checkpoint__best_metric="")  # the same training
    stopped = train(config, tmp_path, on_step=stop_after_step_4)
    assert stopped.stopped_by == "SIGTERM" and 4 <= stopped.step < 6  # the loop runs one step ahead of on_step
    resumed = train(config, tmp_path)
    later = range(stopped.step + 1, 7)
    assert sorted(resumed.losses) == list(later)
    np.testing.assert_allclose([resumed.losses[s] for s in later], [uninterrupted.losses[s] for s in later], rtol=1e-6)


def unmerged_logits(workdir, tokens):
    """Our adapted model, unmerged: the random base of train.seed plus the adapters of best/."""
    config = build.with_absolute_paths(lora_config())
    cfg = build.with_lora(preset("tiny"), config.train)
    adapters = restore_params(workdir / "best", 6, "params", trainable(cfg, abstract_params(cfg)))
    params = lora.join(frozen(cfg, init_params(cfg, config.train.seed)), adapters)
    adapted = np.asarray(model_from_params(cfg, params)(tokens)[0])
    base = np.asarray(model_from_params(cfg.replace(lora=None), frozen(cfg, params))(tokens)[0])
    assert np.abs(adapted - base).max() > 1e-2  # the adapters learned something: the comparison can fail
    return adapted


def test_merged_hugging_face_export_gives_the_logits_of_the_unmerged_model(lora_run, tmp_path):
    import transformers

    workdir, _ = lora_run
    tokens = np.random.default_rng(0).integers(3, 256, (2, 20))
    expected = unmerged_logits(workdir, tokens)
    export(workdir, tmp_path / "hf", "best", format="hf")
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    # and WORKDIR/model, the run's own export, is the same merged model
    merged = load_params(workdir / "model", preset("tiny"))
    np.testing.assert_allclose(model_from_params(preset("tiny"), merged)(tokens)[0], expected, atol=1e-4)


def test_peft_export_loads_with_peft_on_the_base_and_gives_the_same_logits(lora_run, tmp_path):
    import peft
    import transformers

    from oie_jax.convert import jax_to_hf

    workdir, _ = lora_run
    tokens = np.random.default_rng(1).integers(3, 256, (2, 20))
    expected = unmerged_logits(workdir, tokens)
    cfg = build.with_lora(preset("tiny"), lora_config().train)
    (tmp_path / "base").mkdir()
    jax_to_hf.write(tmp_path / "base", preset("tiny"),
                    jax.tree.map(np.asarray, frozen(cfg, init_params(cfg, lora_config().train.seed))))
    export(workdir, tmp_path / "adapters", "best", format="peft")
    base = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapters")).eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_a_bfloat16_base_is_frozen_in_bfloat16_and_the_run_says_so(tmp_path):
    config = lora_config(train__steps=2, export__model=False)
    config.train.lora.base_dtype = "bfloat16"
    config.data.dev = ""
    config.checkpoint.best_metric = ""
    run = Run(config, tmp_path)
    assert {leaf.dtype for leaf in jax.tree.leaves(run.frozen)} == {np.dtype("bfloat16")}
    assert {leaf.dtype for leaf in jax.tree.leaves(run.state.params)} == {np.dtype("float32")}
    out = "\n".join(run.summary_lines())
    assert "lora     rank 4, alpha 8, dropout 0.1 on q, k, v, o, gate, up, down: 8,192 trained" in out
    assert "frozen base 0.00 GiB (bfloat16)" in out


@pytest.mark.parametrize("field, value, message", [
    ("rank", -1, "train.lora.rank = -1: needs >= 0"),
    ("targets", ("q", "qkv"), "train.lora.targets = ('q', 'qkv'): needs one or more of"),
    ("dropout", 1.0, "train.lora.dropout = 1.0: needs in [0, 1)"),
    ("base_dtype", "int8", "train.lora.base_dtype = 'int8'"),
])
def test_bad_lora_fields_are_one_line_errors(field, value, message):
    from oie_jax.train.validate import check_config

    config = lora_config()
    config.train.lora[field] = value
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_config(config)
