"""The synthetic Twitter-GMNER corpus: read back by the GMNER reader, its boxes exactly around the drawn
shapes of the named colour, its ungroundable entities absent from the picture, the same for a seed."""

import numpy as np
import pytest

from oie_jax import cli
from oie_jax.data.images import decode
from oie_jax.data.sources.registry import load_source
from oie_jax.data.synth_gmner import COLOURS, KINDS, synthesize
from oie_jax.errors import UserError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert cli.main(["data", "synth-gmner", "--out", str(out), "--n", "40", "--seed", "3"]) == 0
    return out


def test_the_gmner_reader_reads_every_tweet_with_boxes_that_frame_the_named_shapes(corpus):
    source, result = load_source([str(corpus / "txt")])
    assert source == "gmner" and not result.problems
    assert len(result.records) == 40
    entities = grounded = 0
    for record in result.records:
        image = decode(corpus / "images" / f"{record.grounding.image}.jpg").astype(int)
        if any(record.grounding.boxes):  # a tweet with nothing in its picture has no box file, so no size
            assert image.shape[:2] == (record.grounding.height, record.grounding.width)
        for (label, text), boxes in zip(record.items, record.grounding.boxes):
            colour, kind = text.split()
            assert label == KINDS[kind]
            entities += 1
            grounded += bool(boxes)
            for x1, y1, x2, y2 in boxes:
                near = np.abs(image[y1:y2, x1:x2] - COLOURS[colour]).sum(-1) < 90  # JPEG moves colours a little
                ys, xs = np.nonzero(near)
                assert near.mean() > 0.25, (text, near.mean())
                # the shape touches every side of its box
                assert xs.min() <= 2 and ys.min() <= 2 and xs.max() >= x2 - x1 - 3 and ys.max() >= y2 - y1 - 3
    assert 0.25 < grounded / entities < 0.75  # both kinds, as in Twitter-GMNER
    xml_names = {p.stem for p in (corpus / "xml").glob("*.xml")}
    assert xml_names == {r.grounding.image for r in result.records if any(r.grounding.boxes)}


def test_the_same_seed_gives_the_same_corpus_and_a_full_directory_is_refused(corpus, tmp_path):
    synthesize(tmp_path / "again", 40, seed=3)
    for name in ("txt/train.txt", "txt/test.txt"):
        assert (tmp_path / "again" / name).read_text() == (corpus / name).read_text()
    with pytest.raises(UserError, match="not empty"):
        synthesize(corpus, 10)
