"""The picture-decides corpus: the picture tells every entity's type (a plain pixel count recovers it),
the text tells none (the best text-only guesser fit on train stays near chance on the other splits)."""

from collections import Counter

import numpy as np
import pytest

from oie_jax import cli
from oie_jax.data.images import decode
from oie_jax.data.sources.registry import load_source
from oie_jax.errors import UserError

N = 600


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("picture")
    assert cli.main(["data", "synth-picture", "--out", str(out), "--n", str(N), "--seed", "3"]) == 0
    splits = {}
    for split in ("train", "dev", "test"):
        source, result = load_source([str(out / f"{split}.jsonl")])
        assert source == "records"
        assert not result.problems
        splits[split] = result.records
    return out, splits


def type_from_pixels(image: np.ndarray, box) -> str:
    """The shape's kind from how much of its box it fills: square all, circle pi/4, triangle half, star less."""
    x1, y1, x2, y2 = box
    outside = np.ones(image.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    background = np.median(image[outside], axis=0)
    filled = np.abs(image[y1:y2, x1:x2].astype(int) - background).sum(axis=-1) > 60
    fraction = filled.mean()
    return "ORG" if fraction > 0.92 else "PER" if fraction > 0.65 else "LOC" if fraction > 0.47 else "OTHER"


def test_the_picture_decides_every_type(corpus):
    out, splits = corpus
    records = [r for split in splits.values() for r in split]
    assert len(records) == N and [len(splits[s]) for s in ("train", "dev", "test")] == [420, 90, 90]
    assert set(Counter(r.items[0][0] for r in records)) == {"PER", "ORG", "LOC", "OTHER"}
    for record in records:
        ((label, name),) = record.items
        assert name in record.text
        ((box,),) = record.grounding.boxes
        assert type_from_pixels(decode(out / "images" / f"{record.grounding.image}.jpg"), box) == label, record.id


def test_the_text_alone_guesses_at_chance(corpus):
    _, splits = corpus
    by_text: dict[str, Counter] = {}
    for record in splits["train"]:
        by_text.setdefault(record.text, Counter())[record.items[0][0]] += 1
    overall = Counter(r.items[0][0] for r in splits["train"]).most_common(1)[0][0]
    held_out = splits["dev"] + splits["test"]
    guesses = [by_text[r.text].most_common(1)[0][0] if r.text in by_text else overall for r in held_out]
    right = np.mean([guess == r.items[0][0] for guess, r in zip(guesses, held_out)])
    assert right < 0.4  # four types: chance is 0.25
    seen = [r for r in splits["train"] if sum(by_text[r.text].values()) >= 4]
    assert any(len(by_text[r.text]) >= 3 for r in seen)  # one text, several types


def test_same_seed_same_corpus_and_a_full_directory_is_refused(corpus, tmp_path):
    out, _ = corpus
    assert cli.main(["data", "synth-picture", "--out", str(tmp_path / "again"), "--n", str(N), "--seed", "3"]) == 0
    for split in ("train", "dev", "test"):
        assert (tmp_path / "again" / f"{split}.jsonl").read_text() == (out / f"{split}.jsonl").read_text()
    with pytest.raises(UserError, match="not empty"):
        from oie_jax.data.synth_picture import synthesize
        synthesize(out, 10)
