"""MNRE's release lines into relation records, and relation scores in MNRE's convention against a
plain-Python count. The fixture lines follow the release's layout as its README describes it
(github.com/thecharm/MNRE: one Python dict per line, `token`, `h`/`t` with `name` and `pos`, `img_id`,
`relation`), written here by hand: the real files are not on this machine."""

import random

import pytest

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.data.sources.registry import detect, load_source
from oie_jax.errors import UserError
from oie_jax.eval.relations import relation_scores

LINES = [
    "{'token': ['JFK', 'and', 'Obama', 'at', 'Harvard', '.'], 'h': {'name': 'JFK', 'pos': [0, 1]}, "
    "'t': {'name': 'Harvard', 'pos': [4, 5]}, 'img_id': 'twitter_19_31_16_6.jpg', 'relation': '/per/org/member_of'}",
    "{'token': ['Jordan', 'wins', 'in', 'Chicago'], 'h': {'name': 'Jordan', 'pos': [0, 1]}, "
    "'t': {'name': 'Chicago', 'pos': [3, 4]}, 'img_id': 'twitter_stream_2018_10_10_1.jpg', 'relation': 'None'}",
    "{'token': ['New', 'York', 'Knicks', 'sign', 'Rose'], 'h': {'name': 'New York Knicks', 'pos': [0, 3]}, "
    "'t': {'name': 'Rose', 'pos': [4, 5]}, 'img_id': 'O_123.jpg', 'relation': '/org/per/member_of'}",
    "{'token': ['a', 'b'], 'h': {'name': 'b', 'pos': [0, 1]}, 't': {'name': 'b', 'pos': [1, 2]}, "
    "'img_id': 'x.jpg', 'relation': 'None'}",
    "{'token': ['a', 'b'], 'h': __import__('os').getcwd()}",
]


def test_release_lines_become_relation_records_and_bad_lines_are_reported_by_line_and_field(tmp_path):
    path = tmp_path / "mnre_val.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    assert detect(str(path)) == "mnre"
    source, loaded = load_source([str(path)])
    assert source == "mnre" and len(loaded.records) == 3
    first, none, _ = loaded.records
    assert first.text == "JFK and Obama at Harvard ." and first.task == "Relation Extraction"
    assert first.items == (("JFK", "/per/org/member_of", "Harvard"),)
    assert first.grounding.image == "twitter_19_31_16_6.jpg"
    assert none.items == (("Jordan", "None", "Chicago"),)
    assert fmt.render(first)[1] == "/Relation Extraction/:JFK;/per/org/member_of;Harvard:"
    assert [(p.line, p.field, p.reason) for p in loaded.problems] == [(4, "h.pos", "span mismatch"),
                                                                       (5, "record", "not a dict literal")]
    assert str(loaded.problems[0]) == f"{path}:4: h.pos: span mismatch (words [0, 1] are 'a', name is 'b')"
    assert "getcwd" not in str(loaded.records)  # evaluated as a literal or not at all
    with pytest.raises(UserError):
        load_source([str(path)], strict=True)


RELATIONS = ("None", "/per/org/member_of", "/per/loc/place_of_residence", "/org/org/subsidiary")


def reference(golds, outputs) -> dict:
    """MNRE's micro P/R/F1 by counting instance by instance."""
    correct = predicted = gold = 0
    for record, output in zip(golds, outputs):
        (head, relation, tail), = record.items
        guess = "None"
        for h, r, t in fmt.parse(output, "Relation Extraction").items:
            if h == head and t == tail:
                guess = r
                break
        predicted += guess != "None"
        gold += relation != "None"
        correct += guess == relation != "None"
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    return {"re/p": p, "re/r": r, "re/f1": 2 * p * r / (p + r) if p + r else 0.0}


@pytest.mark.parametrize("seed", range(5))
def test_relation_scores_equal_counting_instance_by_instance(seed):
    rng = random.Random(seed)
    golds, outputs = [], []
    for i in range(300):
        head, tail = f"E{i}", f"F{i}"
        golds.append(Record(f"{head} x {tail}", "Relation Extraction", items=((head, rng.choice(RELATIONS), tail),)))
        kind = rng.random()
        if kind < 0.6:  # a triple on the pair
            outputs.append(f"/Relation Extraction/:{head};{rng.choice(RELATIONS)};{tail}:")
        elif kind < 0.75:  # another pair first, then maybe the right one
            outputs.append(f"/Relation Extraction/:{tail};{rng.choice(RELATIONS)};{head}:"
                           + (f"{head};{rng.choice(RELATIONS)};{tail}:" if rng.random() < 0.5 else ""))
        elif kind < 0.9:
            outputs.append("/Relation Extraction/")  # no triple
        else:
            outputs.append(f"garbage {head}")  # does not parse
    got = relation_scores(golds, outputs).metrics()
    expected = reference(golds, outputs)
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert 0 < expected["re/f1"] < 1
