"""The multimodal run (`train/multimodal.py`) of a tiny random LLaMA and a random MobileNetV2 (saved once as
a vision model directory, as users load a converted one: every run then reads it instead of compiling its
initialisation) on the picture-decides corpus: it learns, evaluates with the images, exports a model that
generates; a SIGKILLed run resumes to the uninterrupted one's losses; the sharded objective equals one
device's. tests/test_grounded_generation.py runs the same config with a random init of the preset."""

import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from oie_jax import sharding
from oie_jax.data import synth_picture
from oie_jax.data.tokenizer import ByteTokenizer
from oie_jax.infer.predict import generate_outputs
from oie_jax.models import encoders
from oie_jax.models.multimodal_dir import load_multimodal_model
from oie_jax.train.config_file import load_config_file
from oie_jax.train.grounding import parts
from oie_jax.train.metrics_log import read_metrics
from oie_jax.train.runs import train
from tests.test_train_loop import SIGNAL_AFTER_STEP, cli, losses, run, two_processes

CONFIG = textwrap.dedent("""
    from oie_jax.train.defaults import base_config

    def get_config():
        c = base_config()
        c.model.preset = "tiny"
        c.model.tokenizer = "bytes"
        c.vision.preset = "mobilenet-v2"  # frozen: its 2 x 2 grid at 64 px is 4 image tokens
        c.vision.init = "{encoder}"  # a saved random one ("": a random init of the preset)
        c.vision.image_size = 64
        c.vision.resize = "squash"
        c.multimodal.enabled = True
        c.multimodal.images = "{corpus}/images"
        c.multimodal.images_per_row = 2  # records of 50-68 tokens: two to a row, each with its picture
        c.data.train, c.data.dev, c.data.source = "{corpus}/train.jsonl", "{corpus}/dev.jsonl", "records"
        c.data.seq_len = 128
        c.data.batch_size = 8
        c.train.steps = 12
        c.train.lr = 1e-3
        c.train.decay = "constant"
        c.checkpoint.every = 5
        c.eval.every = 5
        c.eval.f1_every = 10
        c.eval.f1_examples = 8
        c.log.every = 1
        return c
""")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("multimodal")
    synth_picture.synthesize(root / "corpus", 60, seed=2)
    cfg = encoders.preset("mobilenet-v2")
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(encoders.build(cfg, nnx.Rngs(5)))))()
    # a random init's preprocessing; the config's vision.image_size and vision.resize apply over it
    encoders.save_vision_model(root / "mobilenet", cfg, encoders.preprocess_for(cfg), params)
    path = root / "tiny_multimodal.py"
    path.write_text(CONFIG.format(corpus=root / "corpus", encoder=root / "mobilenet"))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    outcome = train(load_config_file(config_file), workdir)
    assert outcome.step == 12 and outcome.stopped_by is None
    return workdir


def test_the_run_learns_evaluates_with_images_and_exports_a_model_that_generates(uninterrupted, config_file):
    recorded = losses(uninterrupted)
    assert sorted(recorded) == list(range(1, 13)) and recorded[12] < recorded[1]
    metrics = read_metrics(uninterrupted)
    assert any("dev_loss" in m for m in metrics) and any("micro/wl/f1" in m for m in metrics)
    model, preprocess = load_multimodal_model(uninterrupted / "model")
    assert preprocess.size == (64, 64) and model.cfg.image_token_id == 511  # the tiny vocabulary's last id
    from oie_jax.data.sources.registry import load_source

    records = load_source([str(config_file.parent / "corpus" / "test.jsonl")])[1].records[:2]
    images = np.zeros((2, 64, 64, 3), np.float32)
    outputs, stats = generate_outputs(model, ByteTokenizer(), records, max_new_tokens=8, progress=False,
                                      images=images)
    assert len(outputs) == 2 and stats.generated_tokens > 0


def test_sigkill_then_rerun_equals_uninterrupted(uninterrupted, config_file, tmp_path):
    killed = run(["-c", SIGNAL_AFTER_STEP, tmp_path / "run", "7", "SIGKILL", config_file])
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert max(losses(tmp_path / "run")) == 7
    resumed = cli("--config", config_file, "--workdir", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 5" in resumed.stdout
    assert losses(tmp_path / "run") == losses(uninterrupted)  # bitwise: same batches, same state


def test_two_processes_train_and_evaluate_like_one(uninterrupted, config_file, tmp_path):
    """2 processes x 2 CPU devices: each reads and prepares its share of the images, the dev F1's generation
    with images is split over both; losses, dev losses and F1 equal the one-process run's."""
    statuses, errors = two_processes(tmp_path, config=config_file, offset=5300)
    assert statuses == [0, 0], [e[-2000:] for e in errors]

    def curves(workdir):
        metrics = read_metrics(workdir)
        names = ("loss", "dev_loss", "micro/wl/f1")
        return {name: {m["step"]: m[name] for m in metrics if name in m} for name in names}

    multi, single = curves(tmp_path), curves(uninterrupted)
    assert sorted(multi["loss"]) == list(range(1, 13)) and sorted(multi["micro/wl/f1"]) == [0, 10, 12]
    for name in ("loss", "dev_loss"):
        np.testing.assert_allclose([multi[name][s] for s in sorted(single[name])],
                                   [single[name][s] for s in sorted(single[name])], rtol=1e-5)
    assert multi["micro/wl/f1"] == single["micro/wl/f1"]


def test_a_run_with_a_lora_llama_holds_its_adapters_and_exports_them_merged(config_file, tmp_path):
    """The run's state and export (its train step is the grounding run's: tests/test_grounding_train.py)."""
    import dataclasses

    from oie_jax.models import lora
    from oie_jax.train.multimodal import MultimodalRun

    config = load_config_file(config_file)
    config.multimodal.llama = "lora"
    config.train.lora.rank, config.train.lora.alpha = 4, 8.0
    config.data.dev, config.checkpoint.best_metric = "", ""
    run_ = MultimodalRun(config, tmp_path)
    assert set(run_.state.params) == {"llama", "projector"} and set(run_.frozen) == {"llama", "vision"}
    assert all(lora.is_adapter(str(path[-1].key)) for path, _ in
               jax.tree_util.tree_flatten_with_path(run_.state.params["llama"])[0])
    adapters = jax.tree.map(lambda a: a + 0.1, run_.state.params["llama"])  # as if trained (B starts at zero)
    run_.state = dataclasses.replace(run_.state, params={**run_.state.params, "llama": adapters})
    run_.outcome.step = 3
    run_.export()
    model, _ = load_multimodal_model(tmp_path / "model")
    assert model.llama.cfg.lora is None  # a plain LLaMA, the adapters folded in
    base = jax.device_get(run_.frozen["llama"])
    expected = lora.merge(run_.cfg, lora.join(base, jax.device_get(adapters)))[1]["layers"]["attn"]["q"]
    np.testing.assert_allclose(np.asarray(model.llama.layers.attn.q[...]), expected, atol=1e-6)
    assert np.abs(expected - base["layers"]["attn"]["q"]).max() > 0.1


def test_sharded_objective_and_gradients_equal_one_device(config_file, tmp_path):
    from oie_jax.train.multimodal import MultimodalRun

    config = load_config_file(config_file)
    config.train.steps = 1
    run_ = MultimodalRun(config, tmp_path / "work")
    setup = run_.setup
    params = jax.device_get({**run_.frozen, **run_.state.params})  # every part as the run initialised it, on the host
    batch = next(iter(run_.pipeline))
    value_and_grad = jax.value_and_grad(lambda p, b: setup.objective(p, b)[0])
    single_loss, single_grads = jax.jit(value_and_grad)(params, batch)

    mesh = sharding.make_mesh((2, 2, 2))
    placed = {part: jax.device_put(params[part], sharding.param_shardings(parts.abstract_state(setup, part), mesh))
              for part in setup.parts}
    rows = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
    with jax.set_mesh(mesh), sharding.activation_rules(sharding.DEFAULT_RULES):
        loss, grads = jax.jit(value_and_grad)(placed, jax.device_put(batch, rows))
    assert len(grads["projector"]["out"].sharding.device_set) > 1
    np.testing.assert_allclose(float(loss), float(single_loss), rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(single_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4)
    assert np.abs(np.asarray(single_grads["projector"]["hidden"])).max() > 0
