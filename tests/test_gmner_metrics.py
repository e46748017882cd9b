"""GMNER, MNER and EEG counts of the jitted scorer against the plain-Python maximum-matching reference:
hand-made edge cases with their expected counts, then hypothesis-generated sets."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from oie_jax.data.entities import Entity, gold_entities
from oie_jax.data.format import Grounding, Record
from oie_jax.eval.gmner import breakdown, score
from tests.gmner_reference import reference_counts

GOLD_BOX = (10.0, 10.0, 30.0, 20.0)


def counts_of(golds, preds) -> dict[str, list[int]]:
    scores = score(golds, preds)
    ours = {metric: [int(v) for v in row] for metric, row in zip(("gmner", "mner", "eeg"), scores.counts)}
    assert ours == reference_counts(golds, preds)
    return ours


def test_types_compare_ignoring_case():
    gold = [[Entity("Obama", "PER", (GOLD_BOX,))]]
    assert counts_of(gold, [[Entity("Obama", "per", (GOLD_BOX,))]]) == {
        "gmner": [1, 1, 1], "mner": [1, 1, 1], "eeg": [1, 1, 1]}


def test_slices_by_gold_type_and_by_region():
    """Obama (in the image) found with its box; Paris (not in the image) given a box; NBA spurious, no box."""
    golds = [[Entity("Obama", "PER", (GOLD_BOX,)), Entity("Paris", "LOC")]]
    preds = [[Entity("Obama", "per", (GOLD_BOX,)), Entity("Paris", "LOC", (GOLD_BOX,)), Entity("NBA", "ORG")]]
    slices = breakdown(golds, preds)
    assert list(slices) == ["type/LOC", "type/PER", "groundable", "ungroundable"]  # gold types, spelled as there
    counts = {name: {m: [int(v) for v in row] for m, row in zip(("gmner", "mner", "eeg"), part.counts)}
              for name, part in slices.items()}
    assert counts["type/PER"] == {"gmner": [1, 1, 1], "mner": [1, 1, 1], "eeg": [1, 1, 1]}
    assert counts["type/LOC"] == {"gmner": [0, 1, 1], "mner": [1, 1, 1], "eeg": [0, 1, 1]}
    assert counts["groundable"] == {"gmner": [1, 1, 1], "mner": [1, 1, 1], "eeg": [1, 1, 1]}
    # Paris counts where its gold entity is; NBA, with no gold entity, where its own region (none) puts it.
    assert counts["ungroundable"] == {"gmner": [0, 2, 1], "mner": [1, 2, 1], "eeg": [0, 2, 1]}
    ungroundable = ([[golds[0][1]]], [[preds[0][1], preds[0][2]]])
    assert counts["ungroundable"] == reference_counts(*ungroundable)

    from oie_jax.eval.grounded import markdown, to_json

    text = markdown(score(golds, preds), "t", slices=slices)
    assert "| type/PER | 1 | 1 | 100.0 / 100.0 / 100.0 |" in text
    assert "| ungroundable | 1 | 2 | 0.0 / 0.0 / 0.0 | 50.0 / 100.0 / 66.7 |" in text
    assert to_json(score(golds, preds), slices=slices)["slices"]["ungroundable"]["counts"]["mner/tp"] == 1


def test_iou_of_exactly_one_half_is_not_enough():
    gold = [[Entity("Paris", "LOC", ((0.0, 0.0, 2.0, 1.0),))]]
    half = [[Entity("Paris", "LOC", ((0.0, 0.0, 1.0, 1.0),))]]  # overlap 1, union 2
    more = [[Entity("Paris", "LOC", ((0.0, 0.0, 1.01, 1.0),))]]
    assert counts_of(gold, half) == {"gmner": [0, 1, 1], "mner": [1, 1, 1], "eeg": [0, 1, 1]}
    assert counts_of(gold, more) == {"gmner": [1, 1, 1], "mner": [1, 1, 1], "eeg": [1, 1, 1]}


def test_any_of_several_gold_boxes_will_do():
    gold = [[Entity("crowd", "OTHER", ((0.0, 0.0, 5.0, 5.0), GOLD_BOX))]]
    pred = [[Entity("crowd", "OTHER", ((11.0, 10.0, 30.0, 20.0),))]]
    assert counts_of(gold, pred)["gmner"] == [1, 1, 1]


def test_an_entity_predicted_twice_counts_once():
    gold = [[Entity("Obama", "PER", (GOLD_BOX,))]]
    pred = [[Entity("Obama", "PER", (GOLD_BOX,)), Entity(" Obama ", "PER", (GOLD_BOX,))]]
    assert counts_of(gold, pred) == {"gmner": [1, 2, 1], "mner": [1, 2, 1], "eeg": [1, 2, 1]}


def test_not_in_the_image_against_a_box_and_the_reverse():
    ungroundable = [[Entity("NBA", "ORG")]]
    groundable = [[Entity("NBA", "ORG", (GOLD_BOX,))]]
    assert counts_of(ungroundable, [[Entity("NBA", "ORG", (GOLD_BOX,))]])["gmner"] == [0, 1, 1]
    assert counts_of(groundable, [[Entity("NBA", "ORG")]])["eeg"] == [0, 1, 1]
    assert counts_of(ungroundable, [[Entity("NBA", "ORG")]])["gmner"] == [1, 1, 1]
    assert counts_of(groundable, [[Entity("NBA", "PER", (GOLD_BOX,))]]) == {
        "gmner": [0, 1, 1], "mner": [0, 1, 1], "eeg": [1, 1, 1]}  # region right, type wrong


def test_gold_entities_of_a_twitter_gmner_record_keep_their_boxes():
    record = Record("Obama in Paris", "NER", items=(("PER", "Obama"), ("LOC", "Paris")),
                    grounding=Grounding("1", 100, 80, (((1, 2, 3, 4),), ())))
    assert gold_entities(record) == [Entity("Obama", "PER", ((1.0, 2.0, 3.0, 4.0),)), Entity("Paris", "LOC")]


coordinate = st.integers(0, 12).map(float)
box = st.tuples(coordinate, coordinate, coordinate, coordinate).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))  # may have no area


@st.composite
def example(draw):
    """Gold entities whose texts own their boxes (as in Twitter-GMNER), and predictions that copy,
    move, drop or invent boxes, types and texts (with spacing that normalisation removes)."""
    texts = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3, unique=True))
    boxes = {text: tuple(draw(st.lists(box, max_size=2))) for text in texts}
    types = st.sampled_from(["PER", "LOC"])
    gold = [Entity(text, draw(types), boxes[text]) for text in draw(st.lists(st.sampled_from(texts), max_size=4))]
    preds = []
    for _ in range(draw(st.integers(0, 5))):
        text = draw(st.sampled_from([*texts, "z"]))
        choice = draw(st.sampled_from(["gold", "moved", "random", "none"]))
        own = boxes.get(text, ())
        if choice == "gold" and own:
            region = (draw(st.sampled_from(own)),)
        elif choice == "moved" and own:
            x1, y1, x2, y2 = draw(st.sampled_from(own))
            shift = draw(st.integers(-3, 3))
            region = ((x1 + shift, y1, x2 + shift, y2),)
        elif choice == "none":
            region = ()
        else:
            region = (draw(box),)
        preds.append(Entity(draw(st.sampled_from([text, f" {text}"])), draw(types), region))
    return gold, preds


@settings(max_examples=300, deadline=None)
@given(st.lists(example(), min_size=1, max_size=6))
def test_counts_equal_the_reference_on_generated_sets(examples):
    golds, preds = [g for g, _ in examples], [p for _, p in examples]
    counts = counts_of(golds, preds)
    scores = score(golds, preds).metrics()
    tp, predicted, gold = counts["gmner"]
    expected_p = tp / predicted if predicted else 0.0
    np.testing.assert_allclose(scores["gmner/p"], expected_p, rtol=1e-6)
