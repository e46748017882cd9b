"""Reading an extraction out of a model output: label, items, character spans, well-formedness."""

from oie_jax.infer.extract import find_spans, read_output


def test_every_occurrence_of_an_entity_is_found():
    text = "Kazan met Spiegel; Spiegel cut the budget."
    result = read_output(text, "NER", "Film/NER/:Person;Kazan:Person;Spiegel:Person;Nobody")
    assert result.label == "Film" and result.well_formed
    assert result.items == (("Person", "Kazan"), ("Person", "Spiegel"), ("Person", "Nobody"))
    assert result.spans == ({"Kazan": ((0, 5),)}, {"Spiegel": ((10, 17), (19, 26))}, {"Nobody": ()})
    assert [text[s:e] for s, e in result.spans[1]["Spiegel"]] == ["Spiegel", "Spiegel"]


def test_triples_and_events_locate_their_text_values_only():
    text = "Jane Austen wrote Emma in 1815."
    triple = read_output(text, "Relation Extraction", "Lit/Relation Extraction/:Jane Austen;wrote;Emma:")
    assert triple.spans == ({"Jane Austen": ((0, 11),), "Emma": ((18, 22),)},)  # the relation is no span
    event = read_output(text, "Event Extraction", "Lit/Event Extraction/:Publish;wrote;Jane Austen;1815:")
    assert event.spans == ({"wrote": ((12, 17),), "Jane Austen": ((0, 11),), "1815": ((26, 30),)},)


def test_unicode_offsets_are_characters():
    text = "東京と大阪と東京"
    result = read_output(text, "NER", "地理/NER/:地名;東京")
    assert result.spans == ({"東京": ((0, 2), (6, 8))},)


def test_malformed_output_keeps_what_parses_and_says_why():
    result = read_output("Ann met Bob.", "NER", "People/NER/Person;Ann")
    assert not result.well_formed and "':'" in result.reason and result.label == "People" and result.items == ()
    garbage = read_output("Ann met Bob.", "NER", "no separator")
    assert garbage.label == "" and not garbage.well_formed
    assert garbage.to_json()["items"] == [] and garbage.to_json()["output"] == "no separator"


def test_overlapping_and_empty_values():
    assert find_spans("aaaa", "aa") == ((0, 2), (2, 4))  # non-overlapping, left to right
    assert find_spans("abc", "") == ()
    json_item = read_output("Ann met Bob.", "NER", "x/NER/:Person;Bob").to_json()["items"]
    assert json_item == [{"fields": ["Person", "Bob"], "spans": {"Bob": [[8, 11]]}}]
