"""GMNER as generation: Twitter-GMNER records as `Grounded NER` records (`data convert --grounded`) whose
outputs write each entity's region; those outputs read back into boxes score like the gold; a tiny
multimodal run on them trains, and `eval-gmner` of its model writes predictions that `score-gmner`
scores the same."""

import json

import numpy as np
import pytest
from PIL import Image

from oie_jax.cli import main
from oie_jax.data import format as fmt
from oie_jax.data import synth_gmner
from oie_jax.data.entities import Entity, gold_entities, grounded_record
from oie_jax.data.sources.registry import load_source
from oie_jax.eval.gmner import score
from oie_jax.eval.grounded import written_regions
from oie_jax.train.config_file import load_config_file
from oie_jax.train.runs import train
from tests.test_multimodal_run import CONFIG as TINY_MULTIMODAL


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounded")
    synth_gmner.synthesize(root / "corpus", 40, seed=3)
    for split in ("train", "dev", "test"):
        assert main(["data", "convert", "--from", "gmner", "--grounded", str(root / "corpus" / "txt" / f"{split}.txt"),
                     str(root / f"{split}.jsonl")]) == 0
    return root


def test_gold_regions_written_and_read_back_score_like_the_gold(corpus):
    golds = load_source([str(corpus / "corpus" / "txt" / "test.txt")], "gmner")[1].records
    converted = load_source([str(corpus / "test.jsonl")], "records")[1].records
    assert [r.task for r in converted] == ["Grounded NER"] * len(golds)
    assert converted == [grounded_record(r) for r in golds]
    results = []
    for gold, record in zip(golds, converted):
        _, output = fmt.render(record)
        width, height = Image.open(corpus / "corpus" / "images" / f"{gold.grounding.image}.jpg").size
        results.append(written_regions(gold.grounding.image, output, width, height))
        assert results[-1].well_formed
    gold_sets = [gold_entities(r) for r in golds]
    assert sum(e.in_image for g in gold_sets for e in g) > 0 < sum(not e.in_image for g in gold_sets for e in g)
    assert np.all(score(gold_sets, [[e.as_entity() for e in r.entities] for r in results]).prf == 1.0)
    # A region moved by a third of the image is wrong: GMNER and EEG drop, MNER stays.
    def moved(e):
        x1, y1, x2, y2 = e.box
        return Entity(e.text, e.type, ((x1 + width / 3, y1, x2 + width / 3, y2),))

    predicted = [[e.as_entity() if e.box is None else moved(e) for e in r.entities] for r in results]
    f1 = score(gold_sets, predicted).prf[:, 2]
    assert f1[0] < 1 and f1[1] == 1 and f1[2] < 1


def test_a_multimodal_run_on_grounded_records_and_eval_gmner_of_its_model(corpus, capsys):
    # The tiny multimodal run of tests/test_multimodal_run.py on training outputs whose regions are all
    # boxes, so that even a 4-step model writes boxes.
    boxed = [line.replace('"none"]', '"10 20 60 70"]') for line in (corpus / "train.jsonl").read_text().splitlines()]
    assert not any('"none"' in line for line in boxed)
    (corpus / "corpus" / "train.jsonl").write_text("\n".join(boxed) + "\n")
    (corpus / "corpus" / "dev.jsonl").write_text((corpus / "dev.jsonl").read_text())
    (corpus / "tiny_grounded.py").write_text(TINY_MULTIMODAL.format(corpus=corpus / "corpus", encoder=""))
    config = load_config_file(corpus / "tiny_grounded.py")
    config.data.seq_len, config.train.steps = 160, 4
    config.checkpoint.every = config.eval.every = 4
    config.eval.f1_every = 0
    workdir = corpus / "run"
    assert train(config, workdir).step == 4
    out = corpus / "eval"
    assert main(["eval-gmner", "--model", str(workdir / "model"), "--data", str(corpus / "corpus" / "txt" / "test.txt"),
                 "--images", str(corpus / "corpus" / "images"), "--constrained", "--max-new-tokens", "48",
                 "--out", str(out), "--no-progress"]) == 0
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all(p["well_formed"] for p in predictions)  # constrained: every output parses
    assert any(e["box"] is not None for p in predictions for e in p["entities"])
    for prediction in predictions:  # the boxes are the written regions in the image's own pixels
        width, height = Image.open(corpus / "corpus" / "images" / f"{prediction['id']}.jpg").size
        items = fmt.parse(prediction["output"], "Grounded NER").items
        assert [e["text"] for e in prediction["entities"]] == [text for _, text, _ in items]
        for entity, (_, _, region) in zip(prediction["entities"], items):
            box = fmt.region_box(region, width, height)
            assert entity["box"] == (None if box is None else pytest.approx(box, abs=0.05))
    evaluated = json.loads((out / "scores.json").read_text())
    assert main(["score-gmner", "--gold", str(corpus / "corpus" / "txt" / "test.txt"),
                 "--pred", str(out / "predictions.jsonl"), "--out", str(corpus / "rescored")]) == 0
    assert json.loads((corpus / "rescored" / "scores.json").read_text())["counts"] == evaluated["counts"]
    assert main(["eval-gmner", "--model", str(workdir / "model"), "--data", str(corpus / "corpus" / "txt" / "test.txt"),
                 "--images", str(corpus / "corpus" / "images"), "--gold-entities",
                 "--out", str(corpus / "refused")]) != 0
    assert "writes the regions itself" in capsys.readouterr().err
