"""`oie-jax train --dry-run`: every config plans on its target mesh and names its attention kernel,
and the memory plan agrees with what XLA allocates for the real step."""

from pathlib import Path

import jax
import numpy as np
import pytest

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.train import build
from oie_jax.train.config_file import load_config_file
from oie_jax.train.plan import memory, plan
from oie_jax.train.step import make_train_step, state_shardings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("name", ["llama3_8b_mmm_tpu", "llama3_8b_mmm_gpu", "llama2_13b_mmm_tpu", "smollm2_mmm",
                                  "sample_smollm2"])
def test_dry_run_plans_every_config(name):
    config = load_config_file(CONFIGS / f"{name}.py")
    devices = config.mesh.devices = config.mesh.devices or 4  # the CPU configs: plan a 4-device host
    report = plan(config)
    assert "train step traced on the planned mesh" in report
    if config.mesh.device_memory_gb:
        assert ": fits" in report
    assert f"= {devices} devices" in report


@pytest.mark.parametrize("name, kernel", [("llama3_8b_mmm_tpu", "splash"), ("llama3_8b_mmm_gpu", "cudnn"),
                                          ("smollm2_mmm", "xla")])
def test_the_accelerator_configs_plan_their_fused_attention_and_chunked_logits(name, kernel):
    config = load_config_file(CONFIGS / f"{name}.py")
    config.mesh.devices = config.mesh.devices or 4
    report = plan(config)
    assert f"attention: {kernel} (model.attention 'auto'" in report
    chunk = config.train.loss_chunk
    assert chunk and chunk < config.data.seq_len and f"loss over logits of {chunk} positions at a time" in report
    whole = memory(config)
    config.train.loss_chunk = 0
    assert plan(config).count("logits of whole rows") == 1
    vocab_bytes = 4 * config.data.seq_len * 49152  # at least the smallest vocabulary's float32 logits of a row
    assert memory(config)["activations"] - whole["activations"] > vocab_bytes


def test_dry_run_refuses_a_batch_that_does_not_split():
    config = load_config_file(CONFIGS / "llama3_8b_mmm_gpu.py")
    config.data.batch_size = 12  # 3 rows per micro-batch over 8 GPUs
    with pytest.raises(UserError, match="does not divide over 8 batch shards"):
        plan(config)


def compiled_bytes(config) -> int:
    """Arguments plus temporaries of the real train step on this host's first device, as XLA reports."""
    cfg, _ = build.model_config(config.model, planning=True)
    optimizer, _ = build.make_optimizer(config.train, 100)
    mesh = sharding.make_mesh((1, 1, 1))
    shardings = state_shardings(cfg, optimizer, mesh)
    state = build.abstract_state(cfg, optimizer, shardings)
    shape = (config.data.batch_size, config.data.seq_len)
    batch = {name: jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding.batch_sharding(mesh))
             for name in ("tokens", "loss_mask", "segment_ids", "positions")}
    train = config.train
    step = make_train_step(cfg, optimizer, train.micro_batches, train.z_loss, train.loss_scale, train.loss_chunk)
    jitted = jax.jit(step, donate_argnums=0)
    with jax.set_mesh(mesh), sharding.activation_rules(sharding.DEFAULT_RULES):
        analysis = jitted.lower(state, batch).compile().memory_analysis()
    return analysis.argument_size_in_bytes + analysis.temp_size_in_bytes


@pytest.mark.parametrize("remat, rows, seq_len, chunk, micro", [
    ("none", 2, 512, 0, 1),  # every layer's activations and the whole logits dominate
    ("full", 8, 256, 128, 2),  # parameters, Adam moments and two gradient trees dominate
    ("dots_no_batch", 4, 256, 128, 1),
])
def test_the_memory_plan_is_within_a_quarter_of_what_xla_allocates(remat, rows, seq_len, chunk, micro):
    config = load_config_file(CONFIGS / "sample_smollm2.py")
    config.model.init = ""  # the preset's architecture: shapes only, no weights needed
    config.model.remat, config.model.dtype = remat, "float32"
    config.data.batch_size, config.data.seq_len = rows, seq_len
    config.train.loss_chunk, config.train.micro_batches = chunk, micro
    config.mesh.devices, config.mesh.platform = 1, "cpu"
    planned, actual = memory(config)["total"], compiled_bytes(config)
    assert abs(planned - actual) <= 0.25 * actual, (planned / 2**30, actual / 2**30)
