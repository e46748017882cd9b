"""A grounding run through the training loop on a tiny LLaMA and ViT and the synthetic corpus: its parts of
the loss logged, dev loss, a loadable grounding model exported, and a SIGTERM-interrupted run resumed to
the same losses as an uninterrupted one."""

import dataclasses
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
from oie_jax.models import encoders, lora
from oie_jax.models.vision import ViTConfig
from oie_jax.train.defaults import base_config
from oie_jax.train.grounding.run import GroundingRun
from oie_jax.train.metrics_log import read_metrics
from oie_jax.train.runs import train


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
    for changes in ({"grounding.llama": "lora"}, {"train.lora": {**config_for(inputs).train.lora, "rank": 4}}):
        with pytest.raises(UserError, match="grounding.llama = 'lora' and the adapters' train.lora.rank > 0"):
            train(config_for(inputs, **changes), tmp_path)


def test_a_grounding_run_with_a_lora_llama_holds_its_adapters_and_exports_them_merged(inputs, tmp_path):
    """The run's state and export; its train step is tests/test_grounding_train.py's."""
    config = config_for(inputs, **{"grounding.llama": "lora", "data.dev": ""})
    config.train.lora.rank, config.train.lora.alpha = 4, 8.0
    config.checkpoint.best_metric = ""
    run = GroundingRun(config, tmp_path)
    assert set(run.state.params) == {"llama", "head"} and set(run.frozen) == {"llama", "vision"}
    assert all(lora.is_adapter(str(path[-1].key)) for path, _ in
               jax.tree_util.tree_flatten_with_path(run.state.params["llama"])[0])
    # Adapters as if trained (B starts at zero): the export folds them into the LLaMA's weights.
    adapters = jax.tree.map(lambda a: a + 0.1, run.state.params["llama"])
    run.state = dataclasses.replace(run.state, params={**run.state.params, "llama": adapters})
    run.outcome.step = 6
    run.export()
    grounder = load_grounder(tmp_path / "model")
    assert grounder.llama.cfg.lora is None  # a plain LLaMA
    base = jax.device_get(run.frozen["llama"])
    expected = lora.merge(run.cfg, lora.join(base, jax.device_get(adapters)))[1]["layers"]["attn"]["q"]
    np.testing.assert_allclose(np.asarray(grounder.llama.layers.attn.q[...]), expected, atol=1e-6)
    assert np.abs(expected - base["layers"]["attn"]["q"]).max() > 0.1


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
    from oie_jax.train.grounding import parts

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
    assert "| type/" in printed and "| groundable |" in printed and "| ungroundable |" in printed
    assert cli.main(["score-gmner", "--gold", dev,
                     "--pred", str(out / "predictions.jsonl")]) == 0
    rescored = capsys.readouterr().out
    pick = lambda text: [line for line in text.splitlines() if line.startswith("| ") or "gmner/f1" in line]  # noqa: E731
    assert pick(rescored) == pick(printed)
    # The grounding alone: the gold entities stand for the tiny LLaMA's output, so span and type are all right.
    assert cli.main(["eval-gmner", "--model", str(workdir / "model"), "--data", dev, "--images",
                     str(inputs / "synth" / "images"), "--out", str(tmp_path / "gold"), "--gold-entities",
                     "--no-progress"]) == 0
    alone = json.loads((tmp_path / "gold" / "scores.json").read_text())
    assert alone["metrics"]["mner/f1"] == 1.0 and json.loads((out / "scores.json").read_text())["metrics"][
        "mner/f1"] < 1.0
    assert any("--gold-entities" in note for note in alone["notes"])
    # The same for one image from the command line: the entities given are grounded where eval-gmner put them.
    from oie_jax.cli.grounding import load_gmner_gold

    first = json.loads((tmp_path / "gold" / "predictions.jsonl").read_text().splitlines()[0])
    tweet = next(r for r in load_gmner_gold(dev, False) if r.id == first["id"])
    given = [arg for e in first["entities"] for arg in ("--entity", e["type"], e["text"])]
    assert cli.main(["ground", "--model", str(workdir / "model"), "--image",
                     str(inputs / "synth" / "images" / f"{first['id']}.jpg"), "--text", tweet.text, "--json",
                     *given]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(e["text"], e["type"]) for e in single["entities"]] == [(e["text"], e["type"]) for e in first["entities"]]
    for mine, theirs in zip(single["entities"], first["entities"]):
        assert (mine["box"] is None) == (theirs["box"] is None)
        if mine["box"] is not None:
            np.testing.assert_allclose(mine["box"], theirs["box"], atol=0.5)
    assert cli.main(["ground", "--model", str(workdir / "model"), "--image", str(image), "--text", "a b",
                     "--entity", "PER:X", "a"]) == 2
    assert "--entity: item" in capsys.readouterr().err
    assert cli.main(["ground", "--model", str(workdir / "model"), "--image", str(tmp_path / "none.jpg"), "--text",
                     "x"]) == 2
    assert "none.jpg: image not found" in capsys.readouterr().err
    # Proposals beside the cells: the image's file name is its id in the file.
    proposals = inputs / "synth" / "proposals.json"
    assert cli.main(["ground", "--model", str(workdir / "model"), "--image", str(image), "--text", "Red Circle",
                     "--proposals", str(proposals), "--max-new-tokens", "8"]) == 0
    renamed = tmp_path / "renamed.jpg"
    renamed.write_bytes(image.read_bytes())
    assert cli.main(["ground", "--model", str(workdir / "model"), "--image", str(renamed), "--text", "Red Circle",
                     "--proposals", str(proposals)]) == 2
    assert "no proposals for image id 'renamed'" in capsys.readouterr().err


def test_features_computed_once_give_the_losses_of_features_computed_at_every_step(uninterrupted, inputs,
                                                                                      tmp_path, capsys):
    reference, cached = uninterrupted
    outcome = train(config_for(inputs, **{"grounding.cache_features": False}), tmp_path)
    assert "frozen features computed once" not in capsys.readouterr().out
    expected, got = losses(reference), losses(tmp_path)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-5)
    np.testing.assert_allclose([outcome.dev_losses[s] for s in (0, 3, 6)], [cached.dev_losses[s] for s in (0, 3, 6)],
                               rtol=1e-5)


def test_a_head_on_proposals_alone_chooses_among_them_in_training_and_inference(inputs, tmp_path, capsys):
    """grounding.cells=False: the synthetic detector's boxes are the only candidates (carried through the
    features computed once); `ground` needs proposals, and with them gives the training forward's
    choices; `eval-gmner --proposals` runs."""
    from oie_jax import cli
    from oie_jax.data.grounding import GroundingPipeline, example, image_id
    from oie_jax.data.images import ImageSource, decode
    from oie_jax.data.packing import EncodeStats
    from oie_jax.data.pipeline import PipelineConfig
    from oie_jax.data.proposals import read_proposals
    from oie_jax.data.sources.registry import load_source
    from oie_jax.infer.ground import ground
    from oie_jax.models.grounding import choose
    from oie_jax.train.grounding import parts

    file = inputs / "synth" / "proposals.json"
    changes = {"grounding.cells": False, "grounding.proposals": str(file)}
    with pytest.raises(UserError, match="grounding.cells"):
        train(config_for(inputs, **{"grounding.cells": False}), tmp_path / "none")
    outcome = train(config_for(inputs, **changes), tmp_path / "cached")
    assert "proposals " in capsys.readouterr().out
    assert outcome.dev_losses[6] < outcome.dev_losses[0]

    grounder = load_grounder(tmp_path / "cached" / "model")
    assert not grounder.head.cfg.cells
    records = load_source([str(inputs / "synth" / "txt" / "test.txt")])[1].records[:4]
    outputs = []
    for record in records:
        ex = example(record, grounder.tokenizer, 128, EncodeStats())
        outputs.append(ex.tokens[int(np.argmax(ex.loss_mask)):].tolist())
    originals = [decode(inputs / "synth" / "images" / f"{image_id(r)}.jpg") for r in records]
    with pytest.raises(UserError, match="give proposals"):
        ground(grounder, records, originals, outputs=outputs)
    proposals = read_proposals(file)
    regions = [proposals.original(image_id(r), o.shape[1], o.shape[0]) for r, o in zip(records, originals)]
    results = ground(grounder, records, originals, outputs=outputs, proposals=regions, batch_size=4)

    images = ImageSource(inputs / "synth" / "images", grounder.preprocess)
    pipeline = GroundingPipeline(records, grounder.tokenizer, images, PipelineConfig.for_evaluation(128, 4),
                                 proposals=proposals)
    batch = next(iter(pipeline.one_epoch()))
    setup = parts.GroundingSetup(grounder.llama.cfg, grounder.vision.cfg, grounder.head.cfg)
    params = {part: nnx.to_pure_dict(nnx.state(getattr(grounder, part))) for part in parts.PARTS}
    out = parts.forward(setup, params, batch)[0]
    np.testing.assert_array_equal(np.asarray(out.boxes), batch["proposals"])  # the only candidates
    choice = jax.device_get(choose(out))
    compared = 0
    for row, (result, candidates) in enumerate(zip(results, regions)):
        for e, entity in enumerate(result.entities):
            assert (entity.box is not None) == bool(choice.in_image[row, e])
            np.testing.assert_allclose(entity.probability, choice.probability[row, e], rtol=1e-4)
            compared += 1
            if entity.box is not None:
                assert np.abs(candidates - np.array(entity.box)).max(-1).min() < 1e-3, (entity.box, candidates)
    assert compared > 4

    assert cli.main(["eval-gmner", "--model", str(tmp_path / "cached" / "model"), "--data",
                     str(inputs / "synth" / "txt" / "dev.txt"), "--images", str(inputs / "synth" / "images"),
                     "--proposals", str(file), "--out", str(tmp_path / "eval"), "--max-new-tokens", "8",
                     "--no-progress"]) == 0
    assert "gmner/f1 = " in capsys.readouterr().out


def test_grounding_f1_rises_as_the_head_learns(inputs, tmp_path):
    """gmner_synth's learning curve at a small scale: GMNER F1 on held-out tweets of the grounding alone
    (the gold entities given as the LLaMA's output, since the tiny LLaMA extracts nothing), with the
    head as initialised and after the run has trained it on 140 tweets."""
    import dataclasses

    from oie_jax.data.entities import gold_entities
    from oie_jax.data.grounding import example, image_id
    from oie_jax.data.images import decode
    from oie_jax.data.packing import EncodeStats
    from oie_jax.data.sources.registry import load_source
    from oie_jax.eval.gmner import score
    from oie_jax.infer.ground import ground
    from oie_jax.train.grounding import parts

    synthesize(tmp_path / "synth", 200, seed=6)
    txt = tmp_path / "synth" / "txt"
    config = config_for(inputs, **{"grounding.images": str(tmp_path / "synth" / "images"),
                                   "data.train": str(txt / "train.txt"), "data.dev": str(txt / "dev.txt"),
                                   "train.steps": 150, "checkpoint.every": 150, "eval.every": 150,
                                   "log.every": 50})
    train(config, tmp_path / "run")
    trained = load_grounder(tmp_path / "run" / "model")
    setup = parts.GroundingSetup(trained.llama.cfg, trained.vision.cfg, trained.head.cfg)
    head_seed = config.train.seed + parts.PARTS.index("head")  # the run's own initialisation
    initial = dataclasses.replace(trained, head=parts.merged(setup, "head", parts.init_part(setup, "head", head_seed)))

    records = load_source([str(txt / "test.txt")])[1].records
    outputs = []
    for record in records:
        ex = example(record, trained.tokenizer, 128, EncodeStats())
        outputs.append(ex.tokens[int(np.argmax(ex.loss_mask)):].tolist())
    originals = [decode(tmp_path / "synth" / "images" / f"{image_id(r)}.jpg") for r in records]

    def gmner_f1(grounder):
        results = ground(grounder, records, originals, outputs=outputs, batch_size=8)
        predicted = [[e.as_entity() for e in r.entities] for r in results]
        return score([gold_entities(r) for r in records], predicted).metrics()["gmner/f1"]

    before, after = gmner_f1(initial), gmner_f1(trained)
    assert after > before + 0.25, (before, after)  # 0.07 -> 0.45 here
