"""`oie-jax train --dry-run`: every config plans on its target mesh and names its attention kernel,
and the memory plan agrees with what XLA allocates for the real step."""

import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from oie_jax.errors import UserError
from oie_jax.host_memory import resident_bytes
from oie_jax.models import encoders
from oie_jax.train.config_file import load_config_file
from oie_jax.train.plan import host_bytes, memory, plan, vision_activation_bytes, xla_memory

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("name", ["llama3_8b_mmm_tpu", "llama3_8b_mmm_gpu", "llama3_8b_mmm_lora_1gpu",
                                  "llama2_13b_mmm_tpu", "smollm2_mmm", "sample_smollm2", "smollm2_gmner_text",
                                  "smollm2_stockmark"])
def test_dry_run_plans_every_config(name):
    config = load_config_file(CONFIGS / f"{name}.py")
    devices = config.mesh.devices = config.mesh.devices or 4  # the CPU configs: plan a 4-device host
    report = plan(config)
    assert "train step traced on the planned mesh" in report
    if config.mesh.device_memory_gb:
        assert ": fits" in report
    assert f"= {devices} devices" in report


def test_a_multimodal_config_plans_its_image_tokens_and_projector():
    config = load_config_file(CONFIGS / "picture_synth.py")  # MobileNetV2 at 128 px: a 4 x 4 grid
    report = plan(config)
    assert "MobileNetV2 at 128x128" in report and "16 image tokens after each record's BOS" in report
    assert "1 image per row," in report
    parts = memory(config)
    projector = 1280 * 576 + 576 * 576 + 2 * 576  # LLaVA's two linears with biases, MobileNetV2 to SmolLM2
    assert parts["projector weights"] == 4 * projector and parts["projector moments"] == 8 * projector
    config.multimodal.images_per_row = 3  # the encoder reads three images per row
    assert "3 images per row," in plan(config)
    assert memory(config)["vision activations"] == 3 * parts["vision activations"]
    config.multimodal.pool = 2
    assert "4 image tokens after each record's BOS" in plan(config)


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


@pytest.mark.parametrize("remat, rows, seq_len, chunk, micro, lora_rank", [
    ("none", 2, 512, 0, 1, 0),  # every layer's activations and the whole logits dominate
    ("full", 8, 256, 128, 2, 0),  # parameters, Adam moments and two gradient trees dominate
    ("dots_no_batch", 4, 256, 128, 1, 0),
    ("full", 8, 256, 128, 2, 16),  # LoRA: the frozen base dominates
])
def test_the_memory_plan_is_within_a_quarter_of_what_xla_allocates(remat, rows, seq_len, chunk, micro, lora_rank):
    config = load_config_file(CONFIGS / "sample_smollm2.py")
    config.model.init = ""  # the preset's architecture: shapes only, no weights needed
    config.model.remat, config.model.dtype = remat, "float32"
    config.data.batch_size, config.data.seq_len = rows, seq_len
    config.train.loss_chunk, config.train.micro_batches = chunk, micro
    config.train.lora.rank = lora_rank
    config.mesh.devices, config.mesh.platform = 1, "cpu"
    planned, actual = memory(config), xla_memory(config, devices=1)
    assert ("frozen base" in planned) == bool(lora_rank)
    arguments = ("parameters", "frozen base", "optimizer state", "batch")
    assert sum(planned.get(name, 0) for name in arguments) == actual["arguments"]
    assert abs(planned["total"] - actual["total"]) <= 0.25 * actual["total"], (planned, actual)


def test_a_dry_run_for_this_hosts_devices_prints_xlas_figure_beside_the_estimate():
    config = load_config_file(CONFIGS / "tiny_debug.py")
    config.mesh.devices = jax.device_count()
    report = plan(config)
    assert f"XLA, compiled for the {jax.device_count()} local devices: arguments" in report
    host = host_bytes(config, memory(config))  # the CPU devices share this process's memory
    assert host > jax.device_count() * memory(config)["total"] + resident_bytes()["now"] // 2
    printed = float(re.search(r"host memory, resident at the peak: ([\d.]+) GiB", report)[1]) * 2**30
    assert printed > jax.device_count() * memory(config)["total"] and f"+ {jax.device_count()} CPU device(s))" in report
    config.mesh.devices = jax.device_count() // 2  # another host's devices: shapes only
    assert "XLA, compiled" not in plan(config) and "host memory" not in plan(config)
    assert host_bytes(config, memory(config)) is None


@pytest.mark.parametrize("encoder, trainable", [("siglip-vit-b16", False), ("clip-vit-l14", True),
                                                ("mobilenet-v2", False)])
def test_dry_run_with_an_image_encoder_prints_its_memory_and_sharding(encoder, trainable):
    config = load_config_file(CONFIGS / "llama3_8b_mmm_tpu.py")
    text_only = memory(config)
    config.vision.preset, config.vision.trainable = encoder, trainable
    report = plan(config)
    cfg = encoders.preset(encoder)
    what = "MobileNetV2" if encoder == "mobilenet-v2" else f"{cfg.layout} ViT ({cfg.num_layers} layers"
    assert f"M-parameter {what}" in report and " at 224x224, float32 weights" in report
    assert f"{'trained' if trainable else 'frozen'} (architecture of preset {encoder!r})" in report
    assert "forward traced on the planned mesh" in report and "  sharding: " in report
    if encoder != "mobilenet-v2":
        assert "embed over fsdp" in report  # the ViT's weights split like the LLaMA's
    parts = memory(config)
    whole = encoders.num_params(cfg) * 4
    fsdp = config.mesh.devices // config.mesh.shape[0]
    assert whole / fsdp <= parts["vision weights"] <= whole  # float32 weights, split where they divide
    assert ("vision optimizer" in parts) == ("vision gradients" in parts) == trainable
    if trainable:
        assert parts["vision optimizer"] == 2 * parts["vision weights"]
    assert parts["total"] == text_only["total"] + sum(v for k, v in parts.items() if k.startswith("vision"))


def test_a_vision_encoder_whose_heads_do_not_split_over_the_tensor_axis_is_refused():
    config = load_config_file(CONFIGS / "llama3_8b_mmm_tpu.py")
    config.mesh.shape = (1, -1, 8)  # the LLaMA's 32 heads split 8 ways, the ViT's 12 do not
    config.vision.preset = "siglip-vit-b16"
    with pytest.raises(UserError, match=r"dimension of size 12 .*q_heads.* does not split 8 ways"):
        plan(config)


@pytest.mark.parametrize("encoder", ["siglip-vit-b16", "clip-vit-b32", "mobilenet-v2"])
def test_the_frozen_encoders_activation_estimate_is_within_twice_what_xla_allocates(encoder):
    cfg = encoders.preset(encoder)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: encoders.build(cfg, nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((4, 224, 224, 3), np.float32)

    def forward(params, images):
        nnx.replace_by_pure_dict(state, params)
        return tuple(nnx.merge(graphdef, state)(images))

    compiled = jax.jit(forward).lower(nnx.to_pure_dict(state), images).compile()
    actual = compiled.memory_analysis().temp_size_in_bytes
    estimate = vision_activation_bytes(cfg, 4, (224, 224), trainable=False)
    assert actual / 2 <= estimate <= 2 * actual, (estimate, actual)
