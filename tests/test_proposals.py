"""User proposals for the grounding head: the JSON file read with errors that name the file, line and id;
boxes without area, boxes outside the image and ids without an image reported (an error with strict);
and the synthetic corpus's detector boxes carried into the prepared image of a batch."""

import json

import numpy as np
import pytest

from oie_jax.data.grounding import GroundingPipeline, image_id
from oie_jax.data.images import ImageSource, Placement, to_original
from oie_jax.data.pipeline import PipelineConfig
from oie_jax.data.proposals import in_fractions, read_proposals
from oie_jax.data.sources.registry import load_source
from oie_jax.data.synth_gmner import synthesize
from oie_jax.data.tokenizer import ByteTokenizer
from oie_jax.errors import UserError
from oie_jax.models.encoders import Preprocess


def written(tmp_path, text: str):
    path = tmp_path / "proposals.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ('{"17": [[1, 2, 3, 4]],\n "18": [[1, 2, 3]}', r"proposals.json:2: not JSON"),
    ('[[1, 2, 3, 4]]', r"proposals.json: expected one JSON object"),
    ('{"17": {"box": [1, 2, 3, 4]}}', r"proposals.json: 17: expected a list of"),
    ('{"17": [[1, 2, 3, 4], [1, "2", 3, 4]]}', r"proposals.json: 17\[1\]: expected \[x1, y1, x2, y2\]"),
    ('{"17": [[1, 2, 3, true]]}', r"proposals.json: 17\[0\]: expected"),
    ('{"17": [[1, 2, 3, NaN]]}', r"proposals.json: 17\[0\]: expected"),
])
def test_a_malformed_file_names_the_file_line_and_id(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_proposals(written(tmp_path, text))


def test_a_missing_or_binary_file_is_named(tmp_path):
    with pytest.raises(UserError, match="no such proposals file"):
        read_proposals(tmp_path / "absent.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(UserError, match="binary.json: not UTF-8"):
        read_proposals(tmp_path / "binary.json")


def test_boxes_without_area_are_reported_and_left_out(tmp_path):
    path = written(tmp_path, json.dumps({"17": [[0, 0, 10, 10], [5, 5, 5, 9], [8, 2, 3, 6]], "18": [[1, 1, 2, 2]]}))
    proposals = read_proposals(path)
    assert proposals.boxes["17"].tolist() == [[0, 0, 10, 10]] and proposals.boxes["18"].shape == (1, 4)
    (problem,) = proposals.problems
    assert str(path) in problem and "2 boxes without area" in problem and "17[1]" in problem and "17[2]" in problem
    assert proposals.most == 1
    with pytest.raises(UserError, match=r"--strict.*17\[1\]"):
        read_proposals(path, strict=True)


def test_boxes_outside_the_image_are_cut_once_reported_and_wholly_outside_ones_left_out(tmp_path):
    path = written(tmp_path, json.dumps({"17": [[-5, 10, 30, 90], [120, 0, 150, 20], [10, 10, 20, 20]]}))
    proposals = read_proposals(path)
    for _ in range(2):  # every epoch asks again; one report
        assert proposals.original("17", 100, 80).tolist() == [[0, 10, 30, 80], [10, 10, 20, 20]]
    (problem,) = proposals.problems
    assert problem == f"{path}: 17: proposals outside the 100x80 image, cut to it"
    assert proposals.original("99", 100, 80).shape == (0, 4)  # an image without proposals
    with pytest.raises(UserError, match="17: proposals outside"):
        read_proposals(path, strict=True).original("17", 100, 80)


def test_ids_without_an_image_are_reported(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "17.png").write_bytes(b"")
    path = written(tmp_path, json.dumps({"17": [], "18": [[1, 1, 2, 2]], "19x": []}))
    proposals = read_proposals(path)
    proposals.check_ids(tmp_path / "images")
    (problem,) = proposals.problems
    assert str(path) in problem and "2 image ids have proposals but no image" in problem and "18, 19x" in problem


def test_fractions_of_a_padded_image():
    placement = Placement(0.5, 0.5, 0, 0, 200, 100)  # 200x100 padded into a 100x100 square
    np.testing.assert_allclose(in_fractions(np.array([[0, 0, 200, 100], [50, 20, 100, 60]]), placement, (100, 100)),
                               [[0, 0, 1, 0.5], [0.25, 0.1, 0.5, 0.3]])


def test_batches_carry_the_detector_boxes_of_each_image(tmp_path):
    synthesize(tmp_path / "synth", 12, seed=5)
    records = load_source([str(tmp_path / "synth" / "txt")])[1].records
    preprocess = Preprocess(size=(96, 128), mean=(0.5,) * 3, std=(0.5,) * 3, resize="pad")
    images = ImageSource(tmp_path / "synth" / "images", preprocess)
    proposals = read_proposals(tmp_path / "synth" / "proposals.json")
    proposals.check_ids(images.directory)
    assert not proposals.problems and len(proposals.boxes) == 12
    pipeline = GroundingPipeline(records, ByteTokenizer(), images, PipelineConfig.for_evaluation(256, 4),
                                 proposals=proposals)
    seen = 0
    for batch in pipeline.one_epoch():
        assert batch["proposals"].shape == (4, proposals.most, 4)
        for row in range(4):
            if not batch["segment_ids"][row].any():
                continue  # the filler row
            record = records[seen]
            seen += 1
            expected = proposals.boxes[image_id(record)]
            assert batch["proposal_mask"][row].sum() == len(expected)
            _, placement, _ = images.load(image_id(record))
            found = to_original(batch["proposals"][row, :len(expected)] * [128, 96, 128, 96], placement)
            np.testing.assert_allclose(found, expected, atol=1e-3)
            # The synthetic detector finds every gold box.
            for e, gold in enumerate(batch["gold_boxes"][row]):
                for box in gold[batch["gold_mask"][row, e]]:
                    assert np.abs(batch["proposals"][row] - box).max(-1).min() < 1e-5
    assert seen == len(records)
