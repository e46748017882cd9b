"""The unified format: exact rendering, parsing back, and parsing model output that is not well formed."""

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from oie_jax.data import format as fmt
from oie_jax.data.format import Record, normalize, parse, render

DESIGN_RECORD = Record(
    text='In 1953, filming of "On the Waterfront" starring Marlon Brando began, and Kazan struggled with Spiegel\'s '
         "persistent budget cuts and managed to complete the film, which was released the following year in 1954 "
         "and became a huge hit with support from the laborer class.",
    task="NER", label="Literature",
    items=(("Person", "Marlon Brando"), ("Product Name", "On the Waterfront"), ("Person", "Kazan"),
           ("Person", "Spiegel")),
)


def test_real_record_renders_byte_for_byte():
    source, target = render(DESIGN_RECORD)
    assert source == DESIGN_RECORD.text + "/NER"
    assert target == ("Literature/NER/:Person;Marlon Brando:Product Name;On the Waterfront:Person;Kazan"
                      ":Person;Spiegel")
    parsed = parse(target, "NER")
    assert parsed.well_formed and (parsed.label, parsed.items) == (DESIGN_RECORD.label, DESIGN_RECORD.items)
    assert fmt.parse_input(source) == (DESIGN_RECORD.text, "NER")


def test_relation_and_event_layouts():
    triple = Record(text="t", task="Relation Extraction", label="Business",
                    items=(("Microsoft", "acquired", "GitHub"), ("GitHub", "located in", "San Francisco")))
    assert render(triple)[1] == ("Business/Relation Extraction/:Microsoft;acquired;GitHub"
                                 ":GitHub;located in;San Francisco:")
    event = Record(text="t", task="Event Extraction", label="Business",
                   items=(("Acquisition", "acquired", "Microsoft", "GitHub", "2018"), ("Launch", "launched")))
    assert render(event)[1] == "Business/Event Extraction/:Acquisition;acquired;Microsoft;GitHub;2018:Launch;launched:"
    for record in (triple, event):
        assert parse(render(record)[1], record.task).items == record.items


def test_separators_inside_values():
    record = Record(text="t", task="NER", label="Entertainment",
                    items=(("Product Name", "Star Wars: A New Hope"), ("Person", "a;b"), ("Event", "Expo:")))
    assert parse(render(record)[1], "NER").items == record.items
    ambiguous = Record(text="t", task="NER", label="x", items=(("Product Name", "Title: Part;Two"),))
    with pytest.raises(ValueError, match="reads as a new item"):
        render(ambiguous)
    with pytest.raises(ValueError, match="only its last field"):
        render(Record(text="t", task="Relation Extraction", label="x", items=(("a;b", "r", "t"),)))


@pytest.mark.parametrize("output, reason", [
    ("Literature NER Person Kazan", "no '/NER/' separator"),
    ("Literature/NER/Person;Kazan", "do not start with ':'"),
    ("Literature/NER/:Kazan:Person;Spiegel", "has no ';'"),
])
def test_malformed_outputs_keep_what_they_can(output, reason):
    parsed = parse(output, "NER")
    assert not parsed.well_formed and reason in parsed.reason
    if "Spiegel" in output:
        assert parsed.label == "Literature" and parsed.items == (("Person", "Spiegel"),)


def test_relation_output_without_closing_colon_or_fields():
    parsed = parse("Business/Relation Extraction/:Microsoft;acquired;GitHub", "Relation Extraction")
    assert not parsed.well_formed and parsed.items == (("Microsoft", "acquired", "GitHub"),)
    parsed = parse("Business/Relation Extraction/:Microsoft;GitHub:", "Relation Extraction")
    assert not parsed.well_formed and parsed.items == ()
    assert parse("x/Unknown Task/", "Unknown Task").reason == "unknown instruction word 'Unknown Task'"


def test_registered_task():
    fmt.register_task("Keyphrase", "pairs")
    try:
        record = Record(text="t", task="Keyphrase", label="Science", items=(("Key", "protein folding"),))
        assert parse(render(record)[1], "Keyphrase").items == record.items
    finally:
        del fmt.TASKS["Keyphrase"]
    with pytest.raises(ValueError):
        fmt.register_task("a/b", "pairs")


def test_normalize():
    assert normalize("  ＡＢＣ\u3000１２３ \n x ") == "ABC 123 x"
    assert normalize("ｶﾀｶﾅ") == "カタカナ"


# Values mixing scripts; ':' and ';' appear so that the separator rules are exercised.
CHARS = st.sampled_from(list("abcXYZ 東京都大阪株式会社北京大学海淀区中国人。、，！😀") + [":", ";", "-"])
VALUE = st.text(CHARS, min_size=1, max_size=12)
PLAIN = st.lists(st.sampled_from(list("abc東京北京株式会社 😀/") + ["/NER", "NER/", "/Relation Extraction"]),
                 min_size=1, max_size=8).map("".join)  # labels that hold or end with a task word too


REGION = st.one_of(st.just(fmt.REGION_NONE),
                   st.lists(st.integers(0, fmt.REGION_STEPS), min_size=4, max_size=4).map(
                       lambda v: " ".join(map(str, v))))


@st.composite
def records(draw):
    task = draw(st.sampled_from(sorted(fmt.TASKS)))
    kind = fmt.TASKS[task]
    if kind == "grounded":
        item = st.tuples(VALUE, VALUE, REGION)
    else:
        width = {"pairs": st.just(2), "triples": st.just(3), "events": st.integers(2, 5)}[kind]
        item = width.flatmap(lambda n: st.tuples(*[VALUE] * n))
    items = draw(st.lists(item, max_size=5))
    label = draw(st.one_of(st.just(""), PLAIN))
    record = Record(text=draw(st.text(min_size=1, max_size=40)), task=task, label=label, items=tuple(items))
    assume(not fmt.unrenderable(record))
    return record


@settings(max_examples=400, deadline=None)
@given(records())
def test_parse_inverts_render(record):
    source, target = render(record)
    parsed = parse(target, record.task)
    assert parsed.well_formed, parsed.reason
    assert (parsed.label, parsed.items) == (record.label, record.items)
    # Each item's span is exactly its rendered text, ':' included.
    assert [target[a:b] for a, b in parsed.spans] == [":" + ";".join(item) for item in record.items]
    assert fmt.parse_input(source) == (record.text, record.task)


def test_grounded_items_and_regions():
    record = Record(text="Red Circle; Blue Star", task="Grounded NER", items=(
        ("PER", "Red Circle; Blue Star", "0 5 100 99"), ("OTHER", "Blue Star", "none")))
    _, output = render(record)
    assert output == "/Grounded NER/:PER;Red Circle; Blue Star;0 5 100 99:OTHER;Blue Star;none"
    assert parse(output, "Grounded NER").items == record.items
    for bad in ("01 5 9 9", "0 5 101 9", "0 5 9", "0  5 9 9", " 0 5 9 9", "None", "１ 2 3 4"):
        assert "region" in fmt.unrenderable(dataclasses.replace(record, items=(("PER", "Red", bad),)))
        assert not parse(f"/Grounded NER/:PER;Red;{bad}", "Grounded NER").well_formed
    assert "':'" in fmt.unrenderable(dataclasses.replace(record, items=(("PER", "Red: Circle", "none"),)))
    # A box of a 320 x 200 image and back: within half a hundredth of each side.
    box = (13.0, 150.0, 301.0, 199.0)
    assert fmt.render_region(box, 320, 200) == "4 75 94 100"
    assert fmt.region_box("4 75 94 100", 320, 200) == pytest.approx((12.8, 150.0, 300.8, 200.0))
    assert fmt.render_region(None, 320, 200) == "none" and fmt.region_box("none", 320, 200) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.sampled_from(sorted(fmt.TASKS)))
def test_parse_never_raises(output, task):
    parsed = parse(output, task)
    assert isinstance(parsed.well_formed, bool) and (parsed.well_formed or parsed.reason)
    assert len(parsed.spans) == len(parsed.items)
    ends = [0] + [edge for span in parsed.spans for edge in span]
    assert ends == sorted(ends) and ends[-1] <= len(output)
    for (a, b), item in zip(parsed.spans, parsed.items):
        assert output[a] == ":" and item[-1] in output[a:b]
