"""A grounding run through the training loop on a tiny LLaMA and ViT and the synthetic corpus: its parts of
the loss logged, dev loss, a loadable grounding model exported, and a SIGTERM-interrupted run resumed to
the same losses as an uninterrupted one."""

import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from oie_jax.data.synth_gmner import synthesize
from oie_jax.errors import UserError
from oie_jax.infer.ground import load_grounder
from oie_jax.models import encoders
from oie_jax.models.vision import ViTConfig
from oie_jax.train.defaults import base_config
from oie_jax.train.loop import train
from oie_jax.train.metrics_log import read_metrics


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding-run")
    synthesize(root / "synth", 40, seed=4)
    vit = ViTConfig("clip", image_size=64, patch_size=16, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=2, layer_norm_eps=1e-5)
    params = nnx.to_pure_dict(nnx.state(encoders.build(vit, nnx.Rngs(3))))
    (root / "vit").mkdir()
    encoders.save_vision_model(root / "vit", vit, encoders.Preprocess((64, 64), (0.5,) * 3, (0.5,) * 3, "squash"),
                               params)
    return root


def config_for(root, **changes):
    c = base_config()
    c.model.preset, c.model.tokenizer = "tiny", "bytes"
    c.vision.init = str(root / "vit")
    c.grounding.enabled, c.grounding.images, c.grounding.size = True, str(root / "synth" / "images"), 32
    c.data.train, c.data.dev = str(root / "synth" / "txt" / "train.txt"), str(root / "synth" / "txt" / "dev.txt")
    c.data.seq_len, c.data.batch_size = 128, 8
    c.train.steps, c.train.lr = 6, 3e-3
    c.checkpoint.every = c.eval.every = 3
    c.checkpoint.async_save = False
    c.log.every = 1
    for name, value in changes.items():
        section, field = name.split(".")
        c[section][field] = value
    return c


def losses(workdir):
    return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    outcome = train(config_for(inputs), workdir)
    return workdir, outcome


def test_a_grounding_run_logs_its_losses_and_exports_a_grounding_model(uninterrupted):
    workdir, outcome = uninterrupted
    assert outcome.step == 6 and outcome.exported_step == 6
    logged = {m["step"]: m for m in read_metrics(workdir)}
    assert {"kl", "l1", "giou", "entities"} <= set(logged[1]) and logged[1]["entities"] > 0
    assert set(outcome.dev_losses) == {0, 3, 6}
    grounder = load_grounder(workdir / "model")
    assert grounder.preprocess.size == (64, 64) and grounder.tokenizer.encode("a", False) == [ord("a") + 3]
    # The exported head holds the trained weights, and the frozen LLaMA the initial ones.
    assert np.abs(np.asarray(grounder.head.query.out[...])).max() > 0
    initial = jax.jit(lambda: nnx.state(grounder.llama.__class__(grounder.llama.cfg, rngs=nnx.Rngs(0))))()
    np.testing.assert_array_equal(np.asarray(grounder.llama.embed[...]), np.asarray(initial["embed"][...]))


def test_sigterm_then_rerun_gives_the_uninterrupted_losses(uninterrupted, inputs, tmp_path):
    reference, _ = uninterrupted

    def stop_after_step_4(step, _):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train(config_for(inputs), tmp_path, on_step=stop_after_step_4)
    assert stopped.stopped_by == "SIGTERM" and 4 <= stopped.step < 6  # the loop runs one step ahead of on_step
    resumed = train(config_for(inputs), tmp_path)
    assert resumed.step == 6
    expected, got = losses(reference), losses(tmp_path)
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-5)


def test_grounding_config_errors(inputs, tmp_path):
    with pytest.raises(UserError, match="grounding.images"):
        train(config_for(inputs, **{"grounding.images": ""}), tmp_path)
    with pytest.raises(UserError, match="image encoder"):
        train(config_for(inputs, **{"vision.init": ""}), tmp_path)


def test_inference_grounds_an_output_where_the_training_forward_does(uninterrupted, inputs):
    """Two paths to the same numbers: `infer.ground` (prompt + output tokens, spans found in the output,
    images prepared by it) and the training batch's forward pass; the chosen regions must agree."""
    from oie_jax.data.grounding import GroundingPipeline, example
    from oie_jax.data.images import ImageSource, decode, to_original
    from oie_jax.data.packing import EncodeStats
    from oie_jax.data.pipeline import PipelineConfig
    from oie_jax.data.sources.registry import load_source
    from oie_jax.infer.ground import ground
    from oie_jax.models.grounding import choose
    from oie_jax.train import grounding as parts

    workdir, _ = uninterrupted
    grounder = load_grounder(workdir / "model")
    records = load_source([str(inputs / "synth" / "txt" / "test.txt")])[1].records[:4]
    outputs = []
    for record in records:
        ex = example(record, grounder.tokenizer, 128, EncodeStats())
        start = int(np.argmax(ex.loss_mask))
        outputs.append(ex.tokens[start:].tolist())
    originals = [decode(inputs / "synth" / "images" / f"{r.grounding.image}.jpg") for r in records]
    results = ground(grounder, records, originals, outputs=outputs, batch_size=4)
    assert [tuple((e.type, e.text) for e in r.entities) for r in results] == [r.items for r in records]

    images = ImageSource(inputs / "synth" / "images", grounder.preprocess)
    pipeline = GroundingPipeline(records, grounder.tokenizer, images,
                                 PipelineConfig.for_evaluation(128, 4))
    batch = next(iter(pipeline.one_epoch()))
    setup = parts.GroundingSetup(grounder.llama.cfg, grounder.vision.cfg, grounder.head.cfg)
    params = {part: nnx.to_pure_dict(nnx.state(getattr(grounder, part))) for part in parts.PARTS}
    choice = jax.device_get(choose(parts.forward(setup, params, batch)[0]))
    compared = 0
    for row, (record, result) in enumerate(zip(records, results)):
        _, placement, _ = images.load(record.grounding.image)
        for e, entity in enumerate(result.entities):
            assert (entity.box is not None) == bool(choice.in_image[row, e])
            np.testing.assert_allclose(entity.probability, choice.probability[row, e], rtol=1e-4)
            compared += 1
            if entity.box is not None:
                expected = to_original(choice.box[row, e] * 64, placement)
                expected = np.clip(expected, 0, [placement.width, placement.height] * 2)
                np.testing.assert_allclose(entity.box, expected, atol=1e-3)
    assert compared > 4


def test_cli_ground_eval_gmner_and_score_gmner(uninterrupted, inputs, tmp_path, capsys):
    from PIL import Image

    from oie_jax import cli

    workdir, _ = uninterrupted
    image = inputs / "synth" / "images" / "100000.jpg"
    drawn = tmp_path / "drawn.png"
    assert cli.main(["ground", "--model", str(workdir / "model"), "--image", str(image), "--text",
                     "Red Circle meets Blue Star", "--json", "--draw", str(drawn), "--max-new-tokens", "8"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert set(json.loads(line)) >= {"id", "entities", "output"}
    assert Image.open(drawn).size == Image.open(image).size

    out = tmp_path / "eval"
    dev = str(inputs / "synth" / "txt" / "dev.txt")
    assert cli.main(["eval-gmner", "--model", str(workdir / "model"), "--data", dev,
                     "--images", str(inputs / "synth" / "images"), "--out", str(out), "--max-new-tokens", "8",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "report.md", "scores.json", "scores.png"}
    assert cli.main(["score-gmner", "--gold", dev,
                     "--pred", str(out / "predictions.jsonl")]) == 0
    rescored = capsys.readouterr().out
    pick = lambda text: [line for line in text.splitlines() if line.startswith("| ") or "gmner/f1" in line]  # noqa: E731
    assert pick(rescored) == pick(printed)
    assert cli.main(["ground", "--model", str(workdir / "model"), "--image", str(tmp_path / "none.jpg"), "--text",
                     "x"]) == 2
    assert "none.jpg: image not found" in capsys.readouterr().err


def test_features_computed_once_give_the_losses_of_features_computed_at_every_step(uninterrupted, inputs,
                                                                                      tmp_path, capsys):
    reference, cached = uninterrupted
    outcome = train(config_for(inputs, **{"grounding.cache_features": False}), tmp_path)
    assert "frozen features computed once" not in capsys.readouterr().out
    expected, got = losses(reference), losses(tmp_path)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-5)
    np.testing.assert_allclose([outcome.dev_losses[s] for s in (0, 3, 6)], [cached.dev_losses[s] for s in (0, 3, 6)],
                               rtol=1e-5)
