"""The jitted metrics against the plain-Python reference (tests/metrics_reference.py), hand-computed
examples, and a sharded run."""

import random
from fractions import Fraction

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oie_jax.data.format import Record
from oie_jax.eval.encode import encode, pad_rows
from oie_jax.eval.metrics import METRICS, padded_rows, score
from tests.metrics_reference import reference_metrics

# Small pools so that equal, NFKC-equivalent and whitespace-variant strings meet often.
VALUES = ["A", "Ａ", "a", " A", "A  B", "A B", "東京", "東京 ", "ｶﾞ", "ガ", "x:y", "e\u0301", "é", "", "ﬁ", "fi",
          "😀", "Messi", "a;b"]
LABELS = ["History", "history", "Ｈistory", " History ", "", "地理", "Music"]
TASKS = {"NER": (2, 2), "Relation Extraction": (3, 3), "Event Extraction": (2, 4)}
SUBSETS = ["SCNM", "TCREE", "Other"]
LANGUAGES_DRAWN = ["en", "ja", "zh", ""]
NOISE = "/:; Ax東"


def render_raw(label: str, task: str, items, close: bool) -> str:
    """An output string the way a model might write it: no checks, so also ambiguous ones."""
    body = "".join(":" + ";".join(item) for item in items)
    return f"{label}/{task}/{body}" + (":" if close and body else "")


@st.composite
def examples(draw):
    task = draw(st.sampled_from(sorted(TASKS)))
    low, high = TASKS[task]
    item = st.integers(low, high).flatmap(lambda n: st.tuples(*[st.sampled_from(VALUES)] * n))
    gold_items = draw(st.lists(item, max_size=6))
    gold = Record(text="t", task=task, label=draw(st.sampled_from(LABELS)), items=tuple(gold_items),
                  subset=draw(st.sampled_from(SUBSETS)), language=draw(st.sampled_from(LANGUAGES_DRAWN)))
    kind = draw(st.sampled_from(["structured", "structured", "exact", "empty", "noise"]))
    if kind == "empty":
        return gold, ""
    if kind == "noise":
        return gold, draw(st.text(alphabet=NOISE, max_size=20))
    if kind == "exact":
        return gold, render_raw(gold.label, task, gold_items, close=task != "NER")
    pool = gold_items + draw(st.lists(item, max_size=3))
    predicted = draw(st.lists(st.sampled_from(pool), max_size=8)) if pool else []
    label = draw(st.sampled_from(LABELS + [gold.label]))
    return gold, draw(st.sampled_from(["", "x", " "])) + render_raw(label, task, predicted, draw(st.booleans()))


def random_examples(n: int, seed: int) -> tuple[list[Record], list[str]]:
    """The same kinds of examples as the hypothesis strategy, from a seeded generator, in bulk."""
    rng = random.Random(seed)
    golds, outputs = [], []
    for _ in range(n):
        task = rng.choice(sorted(TASKS))
        low, high = TASKS[task]

        def item():
            return tuple(rng.choice(VALUES) for _ in range(rng.randint(low, high)))  # noqa: B023

        gold_items = [item() for _ in range(rng.randint(0, 6))]
        gold = Record(text="t", task=task, label=rng.choice(LABELS), items=tuple(gold_items),
                      subset=rng.choice(SUBSETS), language=rng.choice(LANGUAGES_DRAWN))
        kind = rng.random()
        if kind < 0.1:
            output = ""
        elif kind < 0.2:
            output = "".join(rng.choice(NOISE) for _ in range(rng.randint(0, 20)))
        else:
            pool = gold_items + [item() for _ in range(rng.randint(0, 3))]
            predicted = [rng.choice(pool) for _ in range(rng.randint(0, 8))] if pool else []
            output = render_raw(rng.choice(LABELS + [gold.label] * 3), task, predicted, rng.random() < 0.7)
        golds.append(gold)
        outputs.append(output)
    return golds, outputs


def assert_matches_reference(golds, outputs, **kwargs):
    scores = score(golds, outputs, **kwargs)
    groups, expected = reference_metrics(golds, outputs)
    for i, key in enumerate(scores.groups.keys):
        for m, metric in enumerate(METRICS):
            assert scores.counts[i, m].tolist() == groups[key][metric], (key, metric)
    got = scores.metrics()
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    return scores


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(examples(), min_size=1, max_size=40))
def test_jitted_metrics_equal_the_reference(pairs):
    golds, outputs = zip(*pairs)
    assert_matches_reference(list(golds), list(outputs))


def test_thousands_of_random_examples_at_once():
    golds, outputs = random_examples(5000, seed=1)
    scores = assert_matches_reference(golds, outputs)
    assert scores.examples == 5000 and scores.counts[:, 1, 0].sum() > 1000  # many matched items


def test_sharded_over_eight_devices_equals_one_device():
    assert jax.device_count() == 8
    golds, outputs = random_examples(1000, seed=2)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    sharded = assert_matches_reference(golds, outputs, sharding=sharding)
    encoded, groups = encode(golds, outputs)
    placed = jax.device_put(pad_rows(encoded, padded_rows(len(golds), sharding), groups.padding_group), sharding)
    shards = placed.pred_items.addressable_shards
    assert len(shards) == 8 and {shard.data.shape[0] for shard in shards} == {1024 // 8}
    single = score(golds, outputs)
    np.testing.assert_array_equal(sharded.counts, single.counts)
    assert sharded.metrics() == pytest.approx(single.metrics(), abs=1e-7)


def ner(label, items, language="en"):
    return Record(text="t", task="NER", label=label, items=tuple(items), subset="SCNM", language=language)


def test_hand_computed_tl_wl_all_with_a_malformed_prediction():
    golds = [
        ner("History", [("Person", "Napoleon"), ("Location", "Paris")]),
        ner("Sports", [("Person", "Messi"), ("Team", "Inter Miami")]),
        ner("Science", [("Person", "Curie")]),
        ner("Music", []),
        ner("", [("人名", "山田")], language="ja"),  # a source without text-level labels
    ]
    outputs = [
        "History/NER/:Ｐｅｒｓｏｎ;Napoleon:Location; Paris",  # all right, after NFKC and whitespace
        "Politics/NER/:Person;Messi:Person;Messi",  # wrong label; a duplicate matches once
        "Science/NER/Person;Curie",  # malformed items: the label still counts for TL
        "Music",  # no '/NER/' separator: no label, no items, not well formed
        "/NER/:人名;山田",
    ]
    scores = score(golds, outputs)
    assert scores.groups.keys == (("SCNM", "en"), ("SCNM", "ja"))
    # [tp, pred, gold] for TL, WL, ALL
    assert scores.counts[0].tolist() == [[2, 3, 4], [3, 4, 5], [1, 2, 4]]
    assert scores.counts[1].tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert scores.tallies.tolist() == [[4, 4, 2], [1, 0, 1]]
    expected = {
        "micro/tl/p": Fraction(2, 3), "micro/tl/r": Fraction(1, 2), "micro/tl/f1": Fraction(4, 7),
        "micro/wl/p": Fraction(4, 5), "micro/wl/r": Fraction(2, 3), "micro/wl/f1": Fraction(8, 11),
        "micro/all/p": Fraction(1, 2), "micro/all/r": Fraction(1, 4), "micro/all/f1": Fraction(1, 3),
        "SCNM/en/wl/f1": Fraction(2, 3), "SCNM/ja/wl/f1": 1,
        # macro: ja has no gold label, so TL and ALL average over en alone
        "macro/tl/f1": Fraction(4, 7), "macro/wl/f1": Fraction(5, 6), "macro/all/f1": Fraction(1, 3),
        "ja/macro/wl/f1": 1, "en/micro/all/f1": Fraction(1, 3),
    }
    for name, value in expected.items():
        assert scores.metric(name) == pytest.approx(float(value), abs=1e-6), name
    assert scores.metric() == scores.metric("macro/all/f1")
    assert any("1 of 5 gold examples have no text-level label" in note for note in scores.notes)


def test_relation_triples_and_the_closing_colon():
    gold = Record(text="t", task="Relation Extraction", label="Lit", items=(("Jane", "wrote", "Emma"),),
                  subset="TCREE", language="en")
    well_formed = score([gold], ["Lit/Relation Extraction/:Jane;wrote;Emma:"])
    unclosed = score([gold], ["Lit/Relation Extraction/:Jane;wrote;Emma"])
    assert well_formed.counts[0].tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    # The triple is readable, so WL counts it; the output is not well formed, so ALL does not.
    assert unclosed.counts[0].tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1]]


def test_unknown_metric_name_lists_the_pattern():
    scores = score([ner("A", [])], ["A/NER/"])
    with pytest.raises(KeyError, match="macro/all/f1"):
        scores.metric("macro/all/accuracy")


def test_empty_set_has_zero_scores():
    scores = score([], [])
    assert scores.examples == 0 and scores.metric() == 0.0
