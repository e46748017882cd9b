"""Grounding examples: each entity's tokens found in the target with SmolLM2's and the byte tokenizer,
gold boxes carried into the prepared image, and missing images reported, not dropped."""

import numpy as np
import pytest

from oie_jax.data.grounding import batches, example, item_tokens
from oie_jax.data.images import ImageSource, to_original
from oie_jax.data.packing import EncodeStats
from oie_jax.data.sources.registry import load_source
from oie_jax.data.synth_gmner import synthesize
from oie_jax.data.tokenizer import ByteTokenizer, load_tokenizer
from oie_jax.models.encoders import Preprocess


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, 12, seed=5)
    return out, load_source([str(out / "txt")])[1].records


@pytest.fixture(params=["smollm2", "bytes"])
def tokenizer(request):
    if request.param == "bytes":
        return ByteTokenizer()
    return load_tokenizer(request.getfixturevalue("smollm2_hf_dir"))


def test_each_entity_span_holds_its_item_and_nothing_of_the_next(corpus, tokenizer):
    _, records = corpus
    stats = EncodeStats()
    for record in records:
        ex = example(record, tokenizer, 128, stats)
        assert len(ex.spans) == len(record.items) > 0
        for (start, end), (label, text), next_item in zip(ex.spans, record.items, record.items[1:] + ((None, None),)):
            assert ex.loss_mask[start:end].all()  # in the target
            piece = tokenizer.decode(ex.tokens[start:end].tolist())
            assert f"{label};{text}" in piece
            if next_item[1] is not None:
                assert next_item[1] not in piece.replace(text, "", 1)
    assert not stats.skipped


def test_item_tokens_of_a_broken_generation_keep_the_items_that_parse(tokenizer):
    ids = tokenizer.encode("/NER/:PER;Red Circle:garbage:LOC;Blue Star", add_special_tokens=False)
    parsed, ranges = item_tokens(tokenizer, ids, "NER")
    assert parsed.items == (("PER", "Red Circle:garbage"), ("LOC", "Blue Star"))
    assert [tokenizer.decode(ids[a:b]).strip(":") for a, b in ranges][1].endswith("LOC;Blue Star")


def test_batches_carry_boxes_into_the_prepared_image_and_report_missing_images(corpus, tokenizer):
    out, records = corpus
    preprocess = Preprocess(size=(96, 128), mean=(0.5,) * 3, std=(0.5,) * 3, resize="pad")
    stats = EncodeStats()
    examples = [example(r, tokenizer, 128, stats) for r in records]
    grounded = next(i for i, ex in enumerate(examples) if any(ex.boxes))
    missing = next(i for i, ex in enumerate(examples) if i != grounded)
    (out / "images" / f"{examples[missing].image}.jpg").rename(out / "moved.jpg")
    images = ImageSource(out / "images", preprocess)
    try:
        order = [grounded, missing, 0]
        (batch,) = list(batches(examples, order, 4, images, 128, 4, 2, pad_id=0))
    finally:
        (out / "moved.jpg").rename(out / "images" / f"{examples[missing].image}.jpg")
    assert batch["image"].shape == (4, 96, 128, 3) and batch["tokens"].shape == (4, 128)
    assert list(batch["image_ok"]) == [True, False, True, False]
    assert len(images.problems) == 1 and examples[missing].image in images.problems[0].path
    # Fractions of the prepared image, mapped back to the original, give the gold boxes.
    _, placement, _ = images.load(examples[grounded].image)
    for e, gold in enumerate(examples[grounded].boxes):
        assert batch["gold_mask"][0, e].sum() == len(gold)
        for k, box in enumerate(gold):
            prepared = batch["gold_boxes"][0, e, k] * [128, 96, 128, 96]
            np.testing.assert_allclose(to_original(prepared, placement), box, atol=1e-3)
    assert batch["entity_mask"][0].sum() == len(examples[grounded].spans)
    assert not batch["entity_mask"][3].any() and not batch["segment_ids"][3].any()  # the filler row
