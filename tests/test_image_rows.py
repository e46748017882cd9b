"""Multimodal training batches (`data/image_rows.py`): records with their images packed several to a row.
Each row's sequences and images agree with the records they came from, a resumed pipeline continues with
the same batch, --strict stops at an unreadable image, and a packed row scores every target token as the
record scores alone in its row (segments and image blocks kept apart)."""

import jax
import numpy as np
import pytest

from oie_jax.convert import llava
from oie_jax.data import synth_picture
from oie_jax.data.grounding import image_id
from oie_jax.data.image_rows import ImageRowsPipeline
from oie_jax.data.images import ImageSource
from oie_jax.data.packing import EncodeStats, encode
from oie_jax.data.pipeline import PipelineConfig
from oie_jax.data.sources.registry import load_source
from oie_jax.data.tokenizer import ByteTokenizer
from oie_jax.errors import UserError
from oie_jax.models.encoders import Preprocess
from oie_jax.models.multimodal_dir import load_multimodal_model
from tests.test_multimodal import IMAGE_TOKEN, IMAGE_TOKENS, save_hf_llava

PREPROCESS = Preprocess((64, 64), (0.5,) * 3, (0.5,) * 3, "squash")
PLACEHOLDERS = (IMAGE_TOKEN, IMAGE_TOKENS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("picture")
    synth_picture.synthesize(root, 24, seed=3)
    return load_source([str(root / "train.jsonl")])[1].records, root / "images"


def pipeline(corpus, seq_len=256, images_per_row=3, batch_size=4, pack=True, strict=False, **settings):
    records, directory = corpus
    cfg = PipelineConfig(seq_len, batch_size, pack=pack, **settings)
    return ImageRowsPipeline(records, ByteTokenizer(), ImageSource(directory, PREPROCESS, strict=strict), cfg,
                             PLACEHOLDERS, images_per_row)


def test_rows_hold_their_records_sequences_and_images_in_order(corpus):
    records, directory = corpus
    images = ImageSource(directory, PREPROCESS)
    for per_row, pack in ((3, True), (3, False), (1, True)):
        source = pipeline(corpus, images_per_row=per_row, pack=pack, shuffle=False)
        rows, members = source.epoch_layout(0)
        batches = list(source.one_epoch())
        image = np.concatenate([b["image"] for b in batches])
        tokens = np.concatenate([b["tokens"] for b in batches])
        assert image.shape[1:] == (per_row, 64, 64, 3)
        assert sorted(i for row in members for i in row) == list(range(len(records)))  # each record once
        assert max(len(row) for row in members) == (per_row if pack else 1)
        if pack and per_row == 3:
            assert len(members) < len(records) / 2  # three short records share a row
        for r, row in enumerate(members):
            start = 0
            for k, index in enumerate(row):
                expected = encode(records[index], ByteTokenizer(), 256, EncodeStats(), PLACEHOLDERS)
                end = start + len(expected.tokens)
                np.testing.assert_array_equal(tokens[r, start:end], expected.tokens)
                np.testing.assert_array_equal(rows.loss_mask[r, start:end], expected.loss_mask)
                assert (rows.segment_ids[r, start:end] == k + 1).all()
                np.testing.assert_array_equal(image[r, k], images.load(image_id(records[index]))[0])
                start = end
            assert (tokens[r] == IMAGE_TOKEN).sum() == IMAGE_TOKENS * len(row)
            assert not image[r, len(row):].any()  # blank after the row's last record


def test_a_restored_pipeline_continues_with_the_same_batch(corpus):
    source = pipeline(corpus, seed=5)
    stream = iter(source)
    for _ in range(3):  # into the second epoch
        next(stream)
    state = source.state()
    expected = next(stream)
    resumed = pipeline(corpus, seed=5)
    resumed.restore(state)
    got = next(iter(resumed))
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    with pytest.raises(UserError, match="another pipeline config"):
        pipeline(corpus, seed=5, images_per_row=2).restore(state)


def test_strict_stops_at_an_unreadable_image(tmp_path):
    synth_picture.synthesize(tmp_path, 8, seed=4)
    records = load_source([str(tmp_path / "train.jsonl")])[1].records
    broken = tmp_path / "images" / f"{image_id(records[0])}.jpg"
    broken.write_bytes(b"not an image")
    loose = pipeline((records, tmp_path / "images"), shuffle=False)
    next(iter(loose))
    assert [p.path for p in loose.images.problems] == [str(broken)]
    with pytest.raises(UserError, match=f"image problem \\(--strict\\): {broken}"):
        next(iter(pipeline((records, tmp_path / "images"), strict=True, shuffle=False)))


def target_losses(model, batch, members) -> dict[int, np.ndarray]:
    """Per record: the next-token losses of its target tokens."""
    logits = np.asarray(jax.jit(lambda m, b: m(b["tokens"], b["image"], b["positions"], b["segment_ids"])[0])(
        model, batch), np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    out = {}
    for r, row in enumerate(members):
        for k, index in enumerate(row):
            targets = np.flatnonzero((batch["segment_ids"][r] == k + 1) & (batch["loss_mask"][r] == 1))
            out[index] = -logp[r, targets - 1, batch["tokens"][r, targets]]
    return out


def test_a_packed_row_scores_each_record_as_its_own_row(corpus, tmp_path):
    save_hf_llava("siglip", tmp_path / "hf", seed=1)
    llava.convert(tmp_path / "hf", tmp_path / "ours")
    model, _ = load_multimodal_model(tmp_path / "ours")
    records = corpus[0][:6]
    packed = pipeline((records, corpus[1]), batch_size=2, shuffle=False)
    alone = pipeline((records, corpus[1]), batch_size=6, images_per_row=1, shuffle=False)
    (batch,) = packed.one_epoch()
    assert [len(row) for row in packed.epoch_layout(0)[1]] == [3, 3]
    together = target_losses(model, batch, packed.epoch_layout(0)[1])
    (batch,) = alone.one_epoch()
    separate = target_losses(model, batch, alone.epoch_layout(0)[1])
    assert sorted(together) == sorted(separate) == list(range(6))
    for index in range(6):
        np.testing.assert_allclose(together[index], separate[index], atol=2e-4)
    # The images make a difference: another record's picture changes the scores.
    swapped = dict(batch, image=batch["image"][::-1])
    assert not np.allclose(target_losses(model, swapped, alone.epoch_layout(0)[1])[0], separate[0], atol=2e-4)
