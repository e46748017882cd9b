"""Error analysis: hand-written cases of each kind of error, and per-label counts that add up to the
WL counts of the metrics on random predictions."""

import random
from pathlib import Path

import numpy as np

import oie_jax
from oie_jax.data.format import Record, render
from oie_jax.data.sources.registry import load_source
from oie_jax.eval import errors
from oie_jax.eval.metrics import COUNTS, METRICS, score

SAMPLE = Path(oie_jax.__file__).parent / "data" / "sample"


def ner(text, items, id="r", language="en"):
    return Record(text, "NER", items=tuple(items), id=id, language=language, subset="SCNM")


def output(items, task="NER"):
    return render(Record("x", task, items=tuple(items)))[1]


def test_each_kind_of_error_is_found_and_explained_once(tmp_path):
    gold = ner("Tokyo Tower is a radio tower in Minato, built by Taro Sato in 1958.",
               [("Facility", "Tokyo Tower"), ("Location", "Minato"), ("Person", "Taro Sato"), ("Person", "Taro Sato")],
               id="tower")
    predicted = output([("Facility", "Tokyo"),  # boundary error: same label, overlapping span
                        ("Person", "Minato"),  # wrong label: same span
                        ("Person", "Taro Sato"),  # matched once; the gold holds it twice: one missed
                        ("Product Name", "radio tower")])  # spurious
    analysis = errors.analyse([gold], [predicted])
    assert dict(analysis.kinds) == {"boundary error": 1, "wrong label": 1, "missed entity": 1, "spurious entity": 1}
    assert analysis.examples["wrong label"] == ["tower"]
    rows = {(row[1]): row[2:5] for row in analysis.per_label()}  # label -> (tp, pred, gold)
    assert rows == {"Facility": (0, 1, 1), "Location": (0, 0, 1), "Person": (1, 2, 2), "Product Name": (0, 1, 0)}
    assert analysis.confusion == {("en", "Location", "Person"): 1, ("en", "Person", "Person"): 1}

    # Spans that share a word without overlapping in the text are not a boundary error.
    apart = ner("New York and York Minster", [("Location", "New York")])
    assert dict(errors.analyse([apart], [output([("Location", "York Minster")])]).kinds) == {
        "missed entity": 1, "spurious entity": 1}
    # A relation's label is its relation; its span is head and tail.
    triple = Record("Soseki was born in Edo.", "Relation Extraction", label="Literature",
                    items=(("Soseki", "born in", "Edo"),), id="t", language="en", subset="TCREE")
    analysis = errors.analyse([triple], [output([("Soseki", "lived in", "Edo")], "Relation Extraction")])
    assert dict(analysis.kinds) == {"wrong label": 1}
    assert analysis.confusion == {("en", "born in", "lived in"): 1}

    analysis = errors.analyse([gold], [predicted])
    errors.write(analysis, tmp_path, title="t")
    text = (tmp_path / "errors.md").read_text()
    assert "| wrong label | 1 | 25.0% | tower |" in text and "| en | Location | Person (wrong) | 1 |" in text
    assert (tmp_path / "errors.png").read_bytes()[:4] == b"\x89PNG"


def test_a_prediction_pairs_with_the_gold_label_it_matches_on_a_span_with_two():
    """"Jordan" is a person and a place in the gold; predicted a place (right) and a team (confused with the
    person, the label left on the span), and "Bulls" predicted a team under a gold organization."""
    gold = ner("Jordan left Jordan for the Bulls.", [("Person", "Jordan"), ("Location", "Jordan"),
                                                   ("Organization", "Bulls")])
    predicted = output([("Location", "Jordan"), ("Team", "Jordan"), ("Team", "Bulls")])
    analysis = errors.analyse([gold], [predicted])
    assert analysis.confusion == {("en", "Location", "Location"): 1, ("en", "Person", "Team"): 1,
                                  ("en", "Organization", "Team"): 1}
    assert dict(analysis.kinds) == {"wrong label": 2}


def test_per_label_counts_add_up_to_the_word_level_counts_of_the_metrics():
    rng = random.Random(0)
    _, loaded = load_source([str(SAMPLE / name) for name in ("train.jsonl", "dev.jsonl", "test.jsonl")])
    golds = [r for r in loaded.records if r.items]
    labels = sorted({item[0] for r in golds for item in r.items if r.task != "Relation Extraction"})
    outputs = []
    for gold in golds:  # drop, relabel, cut and invent items
        items = []
        for item in gold.items:
            roll = rng.random()
            if roll < 0.15:
                continue
            if roll < 0.3 and gold.task != "Relation Extraction":
                item = (rng.choice(labels), *item[1:])
            elif roll < 0.4:
                item = (*item[:-1], item[-1][: max(1, len(item[-1]) // 2)])
            items.append(item)
            if roll > 0.9:
                items.append(item)
        outputs.append(output(items, gold.task) if items or rng.random() < 0.5 else "")
    analysis = errors.analyse(golds, outputs)
    counts = score(golds, outputs).counts.sum(0)[METRICS.index("wl")]
    totals = np.sum([row[2:5] for row in analysis.per_label()], axis=0)
    assert dict(zip(COUNTS, totals.tolist())) == dict(zip(COUNTS, counts.tolist()))
    assert totals[0] < totals[2]  # the perturbations did lose items
    # Every gold item left unmatched is explained exactly once (missed, wrong label or boundary).
    kinds = analysis.kinds
    assert kinds["missed entity"] + kinds["wrong label"] + kinds["boundary error"] == totals[2] - totals[0]
    assert kinds["spurious entity"] + kinds["wrong label"] + kinds["boundary error"] == totals[1] - totals[0]


def test_labels_the_plot_font_cannot_draw_are_numbered_and_listed(tmp_path):
    import warnings

    gold = ner("田中さんは東京に住んでいる。", [("人名", "田中"), ("地名", "東京")], language="ja")
    analysis = errors.analyse([gold, ner("Ann met Bob.", [("Person", "Ann")])],
                              [output([("人名", "田中")]), output([("Person", "Ann")])])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        errors.write(analysis, tmp_path, title="t")
    assert not [w for w in caught if "Glyph" in str(w.message)]  # nothing drawn as an empty box
    text = (tmp_path / "errors.md").read_text()
    assert "| #1 (ja) | 人名 |" in text and "| #2 (ja) | 地名 |" in text and "| Person (en) |" not in text
