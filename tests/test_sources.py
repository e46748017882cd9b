"""Corpus readers: real data from ../shared/data, the sample corpus, and every kind of bad input."""

import collections
import json

import pytest

from oie_jax import cli
from oie_jax.data.format import SUBSET_TASKS, Record, parse, render
from oie_jax.data.sample import DIRECTORY as SAMPLE_DIRECTORY
from oie_jax.data.sample import load_sample
from oie_jax.data.sources import load, mmm, stockmark
from oie_jax.data.sources.registry import load_source, write_jsonl
from oie_jax.errors import UserError
from tests.conftest import SHARED_DATA

STOCKMARK = SHARED_DATA / "stockmark-ner" / "ner_train.json"
GMNER = SHARED_DATA / "gmner-twitter10000-v2"
needs_stockmark = pytest.mark.skipif(not STOCKMARK.is_file(), reason=f"{STOCKMARK} is absent (../shared/data)")
needs_gmner = pytest.mark.skipif(not GMNER.is_dir(), reason=f"{GMNER} is absent (../shared/data)")


@needs_stockmark
def test_stockmark_inspect_counts_every_record_and_type(capsys):
    raw = json.loads(STOCKMARK.read_text(encoding="utf-8"))
    types = collections.Counter(e["type"] for r in raw for e in r["entities"])
    assert cli.main(["data", "inspect", str(STOCKMARK)]) == 0
    out = capsys.readouterr().out
    assert "records: 4,809 kept, 0 rejected" in out
    assert len(types) == 8
    for name, count in types.items():
        assert f"{name}" in out and f"{count:,}" in out
    _, result = load_source([str(STOCKMARK)])
    assert collections.Counter(i[0] for r in result.records for i in r.items) == types


@needs_gmner
def test_gmner_inspect_counts_tweets_and_groundable_fraction(capsys):
    assert cli.main(["data", "inspect", str(GMNER)]) == 0
    out = capsys.readouterr().out
    assert "train.txt: read 7000, kept 7000" in out and "dev.txt: read 1500, kept 1500" in out
    _, result = load_source([str(GMNER)])
    boxes = [b for r in result.records for b in r.grounding.boxes]
    fraction = sum(1 for b in boxes if b) / len(boxes)
    assert 0.35 < fraction < 0.45 and f"{fraction:.1%} groundable" in out
    # A box's name is the entity's surface string, so each grounded entity's boxes come from its own file.
    tweet = next(r for r in result.records if any(r.grounding.boxes))
    xml = (GMNER / "xml" / f"{tweet.grounding.image}.xml").read_text()
    for (_, entity), entity_boxes in zip(tweet.items, tweet.grounding.boxes):
        assert bool(entity_boxes) == (f"<name>{entity}</name>" in xml)


def test_sample_corpus_fills_every_cell():
    records = load_sample()
    assert len(records) == 210
    cells = collections.Counter((r.subset, r.language) for r in records)
    assert len(cells) == 21 and set(cells.values()) == {10}
    assert {r.subset for r in records} == set(SUBSET_TASKS)
    splits = {split: len(load_sample(split)) for split in ("train", "dev", "test")}
    assert splits == {"train": 126, "dev": 42, "test": 42}
    for record in records:
        parsed = parse(render(record)[1], record.task)
        assert parsed.well_formed and (parsed.label, parsed.items) == (record.label, record.items), record.id
    _, result = load_source([str(SAMPLE_DIRECTORY)])
    assert len(result.records) == 210 and not result.problems


@pytest.mark.parametrize("name, expected", [
    ("Train_En_0_SCNM_dataset.json", ("train", "en", "SCNM")),
    ("Train_Ja_1_SCPOS_RW.json", ("train", "ja", "SCPOS:RW")),
    ("Train_Ja_2_SCPOS_18W_adj_n.json", ("train", "ja", "SCPOS:Adj&N")),
    ("test_Ch_3_SCPOS_adj.json", ("test", "zh", "SCPOS:Adj")),
    ("test_En_4_SCPOS_n.json", ("test", "en", "SCPOS:N")),
    ("test_Ch_5_TCREE_2k_clear2.json", ("test", "zh", "TCREE")),
    ("Train_Ch_MRE_OIEDataset.json", ("train", "zh", "TCONER")),
])
def test_release_file_names(name, expected, tmp_path):
    assert mmm.describe_file(tmp_path / name) == expected


def write_lines(path, lines, encoding="utf-8"):
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return path


def good(text="Kazan met Spiegel in Paris.", output="History/NER/:Person;Kazan:Person;Spiegel"):
    return json.dumps({"input": text + "/NER", "output": output}, ensure_ascii=False)


def test_mmm_bad_records_are_reported_with_file_line_and_reason(tmp_path):
    path = write_lines(tmp_path / "Train_En_0_SCNM_dataset.jsonl", [
        good(),
        '{"input": "broken',
        json.dumps({"input": "Kazan met Spiegel./NER"}),
        json.dumps({"input": "Kazan met Spiegel./Summarize", "output": "x"}),
        good(output="History/NER/:Person;Brando"),
        good(text="   "),
        good(output="History NER Person Kazan"),
        good(text="Tokyo is big.", output="Geography/NER/:Location;Tokyo"),
    ])
    result = load([str(path)], mmm.read, (".jsonl",))
    assert [r.text for r in result.records] == ["Kazan met Spiegel in Paris.", "Kazan met Spiegel in Paris.",
                                                "Tokyo is big."]
    assert result.records[0].subset == "SCNM" and result.records[0].language == "en"
    reasons = [(p.line, p.field, p.reason) for p in result.problems]
    assert reasons == [(2, "json", "malformed JSON"), (3, "output", "missing field"),
                       (4, "input", "unknown instruction word"), (6, "text", "empty text"),
                       (7, "output", "malformed output")]
    # An entity that is not in its text is kept and counted (translated corpora have such records).
    assert [(p.line, p.reason, p.rejects) for p in result.warnings] == [(5, "entity not in text", False)]
    summary = result.files[0]
    assert summary.read == 8 and summary.kept == 3 and sum(summary.rejected.values()) == 5
    assert summary.warned == {"entity not in text": 1}
    assert str(result.problems[0]).startswith(f"{path}:2: json: malformed JSON")
    with pytest.raises(UserError, match=":2: json: malformed JSON"):
        load([str(path)], mmm.read, (".jsonl",), strict=True)
    # Gold data to score keeps every record that could be read: the empty text too, as a warning.
    gold = load([str(path)], mmm.read, (".jsonl",), keep_all=True)
    assert len(gold.records) == 4
    assert [(p.line, p.reason) for p in gold.warnings] == [(5, "entity not in text"), (6, "empty text"),
                                                           (6, "entity not in text")]
    assert [p.line for p in gold.problems] == [2, 3, 4, 7]


def test_entities_are_found_in_the_text_after_normalization(tmp_path, capsys):
    path = write_lines(tmp_path / "Train_Ja_0_SCNM_dataset.jsonl", [
        good(text="Ｐａｒｉｓは大きい。", output="地理/NER/:地名;Paris"),  # full-width letters in the text
        good(text="京都は古い。", output="地理/NER/:地名;Kyoto"),  # a translation that lost its entity
    ])
    result = load([str(path)], mmm.read, (".jsonl",))
    assert len(result.records) == 2 and [p.detail for p in result.warnings] == ["'Kyoto'"]
    assert cli.main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "records: 2 kept, 0 rejected, 1 kept with a warning" in out
    assert "entity not in text" in out and ":2: items: entity not in text ('Kyoto')" in out


def test_rows_that_name_their_language_and_subset_keep_them(tmp_path):
    # The file name says Japanese TCREE; each row says otherwise, in the release's codes or ours.
    rows = [{"input": "Kazan met Spiegel in Paris./NER", "output": "History/NER/:Person;Kazan", "id": str(i),
             "language": language, "subset": "SCNM"} for i, language in enumerate(("En", "ja", "Ch", "zh"))]
    path = write_lines(tmp_path / "test_Ja_5_TCREE_2k_clear2.jsonl", [json.dumps(row) for row in rows])
    source, result = load_source([str(path)])
    assert source == "mmm"
    assert [(r.id, r.language, r.subset) for r in result.records] == [
        ("0", "en", "SCNM"), ("1", "ja", "SCNM"), ("2", "zh", "SCNM"), ("3", "zh", "SCNM")]


def test_json_list_lines_and_wrong_encoding(tmp_path):
    records = [
        {"curid": "1", "text": "東京都に住む。", "entities": [{"name": "東京都", "span": [0, 3], "type": "地名"}]},
        {"curid": "2", "text": "大阪府に行く。", "entities": [{"name": "大阪", "span": [0, 3], "type": "地名"}]},
        {"curid": "3", "text": "", "entities": []},
    ]
    path = tmp_path / "ner.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    result = load([str(path)], stockmark.read, (".json",))
    assert [r.id for r in result.records] == ["1"]
    starts = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line == " {"]  # each record
    assert [(p.line, p.field, p.reason) for p in result.problems] == [
        (starts[1], "entities[0].span", "span mismatch"), (starts[2], "text", "empty text")]
    latin = write_lines(tmp_path / "Train_En_0_SCNM.jsonl", [good(text="Café Kazan met Spiegel")], encoding="latin-1")
    result = load([str(latin)], mmm.read, (".jsonl",))
    assert not result.records and result.problems[0].reason == "not UTF-8" and result.problems[0].line == 1


def test_strict_cli_exits_2_and_convert_writes_readable_records(tmp_path, capsys):
    path = write_lines(tmp_path / "Train_En_0_SCNM_dataset.jsonl", [good(), '{"input": "broken'])
    assert cli.main(["data", "inspect", str(path), "--strict"]) == 2
    assert ":2: json: malformed JSON" in capsys.readouterr().err
    out = tmp_path / "records.jsonl"
    assert cli.main(["data", "convert", "--from", "mmm", str(path), str(out)]) == 0
    captured = capsys.readouterr()
    assert "rejected:" in captured.err and "wrote 1 mmm records" in captured.out
    _, result = load_source([str(out)])
    assert result.records == [Record(text="Kazan met Spiegel in Paris.", task="NER", label="History",
                                     items=(("Person", "Kazan"), ("Person", "Spiegel")), language="en",
                                     subset="SCNM", id=result.records[0].id)]


def test_instruction_variant_and_globs(tmp_path):
    lines = [json.dumps({"instruction": "/NER", "input": "Kazan met Spiegel.", "output": "History/NER/:Person;Kazan"}),
             json.dumps({"instruction": "Summarize", "input": "Kazan met Spiegel.", "output": "x"})]
    write_lines(tmp_path / "Train_En_0_SCNM_a.jsonl", lines)
    write_lines(tmp_path / "test_Ja_0_SCNM_b.jsonl", [good()])
    result = load([str(tmp_path / "*_SCNM_*.jsonl")], mmm.read, (".jsonl",))
    assert [f.path.rsplit("/", 1)[-1] for f in result.files] == ["Train_En_0_SCNM_a.jsonl", "test_Ja_0_SCNM_b.jsonl"]
    assert [(r.text, r.items, r.language) for r in result.records] == [
        ("Kazan met Spiegel.", (("Person", "Kazan"),), "en"),
        ("Kazan met Spiegel in Paris.", (("Person", "Kazan"), ("Person", "Spiegel")), "ja")]
    assert [p.reason for p in result.problems] == ["unknown instruction word"]
    with pytest.raises(UserError, match="no such file"):
        load([str(tmp_path / "nothing-*.json")], mmm.read, (".json",))


def test_conll_bio_and_bad_tags(tmp_path):
    path = write_lines(tmp_path / "x.txt", ["New\tB-LOC", "York\tI-LOC", "is\tO", "big\tO", "",
                                            "Bad\tX-LOC", "", "Ann\tI-PER", "Lee\tI-PER", "ran\tO"])
    _, result = load_source([str(path)], "conll")
    assert [(r.text, r.items) for r in result.records] == [
        ("New York is big", (("LOC", "New York"),)), ("Ann Lee ran", (("PER", "Ann Lee"),))]
    assert [(p.line, p.reason) for p in result.problems] == [(6, "unknown tag")]


def test_readers_report_what_json_and_types_allow(tmp_path, capsys):
    listing = tmp_path / "ner.json"
    entity = {"name": "東京都", "span": [0, 3], "type": "地名"}
    good_record = {"curid": "1", "text": "東京都に住む。", "entities": [entity]}
    bad_type = {"curid": "2", "text": "東京都に住む。", "entities": [dict(entity, type=5)]}
    listing.write_text(json.dumps([good_record, bad_type], ensure_ascii=False) + "\n{\"curid\": \"3\"}\n")
    result = load([str(listing)], stockmark.read, (".json",))
    assert [r.id for r in result.records] == ["1"]
    assert [(p.line, p.reason) for p in result.problems] == [(1, "not text"), (2, "malformed JSON")]
    # Records holding line and paragraph separators survive convert -> read.
    record = Record(text="Kazan\u2028met\u0085Spiegel\x0c.", task="NER", label="History", items=(("Person", "Kazan"),))
    write_jsonl([record], tmp_path / "out.jsonl")
    _, back = load_source([str(tmp_path / "out.jsonl")])
    assert back.records == [record] and not back.problems
    write_lines(tmp_path / "items.jsonl", [json.dumps({"text": "a b", "task": "NER", "items": [["P", 5]]})])
    _, bad = load_source([str(tmp_path / "items.jsonl")], "records")
    assert [(p.field, p.reason) for p in bad.problems] == [("items", "not text")]
    # --from auto guesses from a glob's first match.
    assert cli.main(["data", "inspect", str(tmp_path / "ou*.jsonl")]) == 0
    assert "source: records" in capsys.readouterr().out


def test_gmner_boxes_without_area_outside_the_image_or_of_no_entity_are_warned(tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "xml").mkdir()
    (tmp_path / "txt" / "train.txt").write_text("IMGID:7\nRed\tB-PER\nCircle\tI-PER\nand\tO\nBlue\tB-ORG\n")
    objects = [("Red Circle", (10, 10, 50, 40)), ("Red Circle", (90, 5, 140, 30)), ("Blue", (20, 20, 20, 60)),
               ("Blue", (120, 90, 130, 99)), ("Green Star", (1, 1, 5, 5))]
    (tmp_path / "xml" / "7.xml").write_text(
        "<annotation><size><width>100</width><height>80</height></size>" + "".join(
            f"<object><name>{name}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
            "</bndbox></object>" for name, (a, b, c, d) in objects) + "</annotation>")
    files, result = load_source([str(tmp_path / "txt" / "train.txt")], "gmner")
    (record,) = result.records
    assert record.grounding.boxes == (((10, 10, 50, 40), (90, 5, 100, 30)), ())
    reasons = collections.Counter(p.reason for p in result.warnings)
    assert reasons == {"box outside the image, cut to it": 1, "box without area in the image": 2,
                       "box named by no entity": 1}
    assert all(p.path.endswith("7.xml") and "7" in p.path for p in result.warnings)
