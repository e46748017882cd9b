"""The translation stages one by one on hand-written bilingual cases: label tables, the prompt and
its parser, the filters and their reason codes, the answer cache, calibration."""

import asyncio
import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.errors import UserError
from oie_jax.translate import filters
from oie_jax.translate.backends import MAX_RETRY_AFTER_S, Answer, retry_after
from oie_jax.translate.cache import AnswerCache, answer_key
from oie_jax.translate.calibration import CORRECTIONS_FILE, read_calibrated
from oie_jax.translate.labels import LabelTables, UnknownLabel
from oie_jax.translate.prompt import Translation, Unusable, build_prompt, entities_of, load_examples, parse_answer
from oie_jax.translate.release import PUBLISHED
from oie_jax.translate.run import Source, Translator, release_name, translate, write_outputs
from tests.translation_cases import CASES, answer

TABLES = LabelTables.load("ja")


def test_label_tables_translate_every_label_kind_and_report_unknown_ones(tmp_path):
    ner, relation, event, sentiment = (CASES[0][0], CASES[2][0], CASES[3][0], CASES[4][0])
    assert TABLES.translate(ner, "en").items == (("Facility", "東京タワー"), ("Location", "東京都港区"))
    assert TABLES.translate(ner, "zh").items == (("设施名", "東京タワー"), ("地名", "東京都港区"))
    assert TABLES.translate(ner, "en").language == "en" and TABLES.translate(ner, "en").label == ""
    assert TABLES.translate(relation, "en").items == (("夏目漱石", "born in", "江戸"),)
    assert TABLES.translate(relation, "en").label == "Literature"
    assert TABLES.translate(event, "zh").items == (("选举", "選挙", "田中"),)
    assert TABLES.translate(sentiment, "en").label == "Positive"
    assert TABLES.translate(sentiment, "en").items == (("Adjective", "素晴らしい"),)
    # Every stockmark type, and the sample corpus's English names for them.
    stockmark = {"人名": "Person", "法人名": "Corporation", "政治的組織名": "Political Organization",
                 "その他の組織名": "Other Organization", "地名": "Location", "施設名": "Facility",
                 "製品名": "Product Name", "イベント名": "Event"}
    for ja, en in stockmark.items():
        assert TABLES.translate(Record("x", "NER", items=((ja, "x"),)), "en").items[0][0] == en
    magic = Record("魔法", "NER", items=(("魔法名", "魔法"),))
    assert TABLES.translate(magic, "en") == UnknownLabel("pair", "魔法名")
    assert TABLES.translate(dataclasses.replace(ner, label="謎"), "en") == UnknownLabel("text", "謎")
    assert TABLES.translate(ner, "fr") == UnknownLabel("pair", "施設名")  # no French column
    extra = tmp_path / "mine.json"
    extra.write_text(json.dumps({"pair": {"魔法名": {"en": "Spell"}}}), encoding="utf-8")
    assert LabelTables.load("ja", extra).translate(magic, "en").items == (("Spell", "魔法"),)
    extra.write_text(json.dumps({"entity": {}}), encoding="utf-8")
    with pytest.raises(UserError, match="unknown section 'entity'"):
        LabelTables.load("ja", extra)
    with pytest.raises(UserError, match="no built-in label tables from 'fr'"):
        LabelTables.load("fr")


def test_the_prompt_carries_the_example_and_the_record_and_its_example_answer_parses():
    examples = load_examples("ja", ["en", "zh"])
    record, translations = CASES[0]
    source = Translation(record.text, entities_of(record))
    prompt = build_prompt(source, "ja", "en", examples["en"])
    assert "into English" in prompt and prompt.endswith("Answer:\n")
    assert f"Japanese text: {record.text}\nEntities:\n1. 東京タワー\n2. 東京都港区\n" in prompt
    example_answer = prompt.split("Answer:\n")[1].split("\n\n")[0]
    assert parse_answer(example_answer, 3) == examples["en"].target
    assert "into Simplified Chinese" in build_prompt(source, "ja", "zh", examples["zh"])
    assert "Entities:\n(none)" in build_prompt(Translation("今日は晴れです。", ()), "ja", "en", examples["en"])
    assert entities_of(CASES[3][0]) == ("選挙", "田中")  # trigger and argument, each once
    with pytest.raises(UserError, match="no one-shot example for ja>fr"):
        load_examples("ja", ["fr"])


def test_the_answer_parser_says_why_an_answer_is_unusable():
    good = answer("Tokyo Tower is in Minato.", ("Tokyo Tower", "Minato"))
    assert parse_answer(good, 2) == Translation("Tokyo Tower is in Minato.", ("Tokyo Tower", "Minato"))
    chatty = "Sure! Here it is.\n```\n" + good + "\n```\nHope this helps."
    assert parse_answer(chatty, 2) == parse_answer(good, 2)
    assert parse_answer("TEXT: It is sunny.", 0) == Translation("It is sunny.", ())
    cases = {
        "": "empty answer",
        "   \n": "empty answer",
        "Tokyo Tower is in Minato.": "no 'TEXT:' line",
        "TEXT: a\nTEXT: b\nENTITY 1: a\nENTITY 2: b": "more than one 'TEXT:' line",
        "TEXT: \nENTITY 1: a\nENTITY 2: b": "the translated text is empty",
        "TEXT: a b\nENTITY 1: a": "no 'ENTITY 2:' line",
        "TEXT: a b\nENTITY 1: a\nENTITY 1: b": "ENTITY 1 given twice",
        "TEXT: a b\nENTITY 1: a\nENTITY 2: b\nENTITY 3: c": "ENTITY 3 was not asked for (2 entities)",
        "TEXT: a b\nENTITY 1:\nENTITY 2: b": "ENTITY 1 is empty",
    }
    for text, reason in cases.items():
        assert parse_answer(text, 2) == Unusable(reason), text
    assert parse_answer(None, 1) == Unusable("empty answer")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("TEXNIY: 12\n;ab東")), max_size=60), st.integers(0, 3))
def test_the_answer_parser_never_raises(text, count):
    result = parse_answer(text, count)
    assert isinstance(result, Translation | Unusable)
    if isinstance(result, Translation):
        assert len(result.entities) == count


def checked(index: int, target: str, text: str | None = None, entities=None):
    """The filters' verdict on case `index` translated into `target`, with its text or entities changed."""
    record, translations = CASES[index]
    good_text, good_entities = translations[target]
    translation = Translation(text if text is not None else good_text,
                              tuple(entities if entities is not None else good_entities))
    translated = filters.assemble(TABLES.translate(record, target), entities_of(record), translation)
    return filters.check(record, translated, translation, TABLES, target), translated


def test_the_filters_pass_good_translations_and_give_each_rejection_its_reason():
    for index in range(len(CASES)):
        for target in ("en", "zh"):
            assert checked(index, target)[0] is None, (index, target)
    _, tower = checked(0, "en")
    assert tower.items == (("Facility", "Tokyo Tower"), ("Location", "Minato, Tokyo"))
    assert tower.language == "en" and fmt.render(tower)[1] == "/NER/:Facility;Tokyo Tower:Location;Minato, Tokyo"

    rejection = checked(0, "en", text="Tokyo Tower is a radio tower in 港区, Tokyo.")[0]
    assert (rejection.stage, rejection.reason, rejection.detail) == ("untranslated", "untranslated_text", "港区")
    assert checked(0, "en", text="Tokyo Tower is a radio tower in Minato, Tokyo。")[0].reason == "untranslated_text"
    assert checked(1, "en", entities=("Taro Yamada", "トヨタ"))[0].reason == "untranslated_entity"
    # Chinese keeps kanji; kana left in it is untranslated.
    assert checked(0, "zh", text="东京タワー是位于东京都港区的电波塔。")[0].detail == "タワー"
    assert checked(0, "zh")[0] is None

    rejection = checked(0, "en", entities=("Tokyo Tower", "Minato Ward"))[0]
    assert (rejection.stage, rejection.reason) == ("alignment", "entity_not_in_text")
    assert "'Minato Ward'" in rejection.detail
    # Compared after normalize: full-width letters and extra spaces still align.
    assert checked(0, "en", text="Ｔｏｋｙｏ  Tower is a radio tower in Minato, Tokyo.")[0] is None

    record = CASES[0][0]
    translation = Translation("Tokyo Tower is in Minato, Tokyo.", ("Tokyo Tower", "Minato, Tokyo"))
    translated = filters.assemble(TABLES.translate(record, "en"), entities_of(record), translation)
    fewer = dataclasses.replace(translated, items=translated.items[:1])
    assert filters.structure(record, fewer, TABLES, "en").reason == "item_count"
    foreign = dataclasses.replace(translated, items=(("Building", "Tokyo Tower"), translated.items[1]))
    assert filters.structure(record, foreign, TABLES, "en").reason == "label_not_in_target_set"
    broken = Translation("a: b;c is here", ("Tokyo Tower", "x: b;c"))
    rejected = filters.structure(record, filters.assemble(TABLES.translate(record, "en"), entities_of(record), broken),
                                 TABLES, "en")
    assert rejected.reason == "unrenderable"
    assert filters.structure(record, dataclasses.replace(translated, text=" "), TABLES, "en").reason == "empty_text"


def test_the_answer_cache_is_keyed_by_backend_model_prompt_and_sampling(tmp_path):
    cache = AnswerCache(tmp_path / "cache.sqlite")
    key = answer_key("openai:http://x/v1", "m", "prompt", {"temperature": 0.0})
    assert cache.get(key) is None
    cache.put(key, "openai:http://x/v1", "m", "prompt", {"temperature": 0.0}, Answer("TEXT: a", truncated=True))
    cache.close()
    reopened = AnswerCache(tmp_path / "cache.sqlite")
    assert reopened.get(key) == Answer("TEXT: a", truncated=True) and len(reopened) == 1
    for other in (answer_key("openai:http://y/v1", "m", "prompt", {"temperature": 0.0}),
                  answer_key("openai:http://x/v1", "n", "prompt", {"temperature": 0.0}),
                  answer_key("openai:http://x/v1", "m", "prompt ", {"temperature": 0.0}),
                  answer_key("openai:http://x/v1", "m", "prompt", {"temperature": 0.5})):
        assert reopened.get(other) is None
    old = sqlite3.connect(str(tmp_path / "old.sqlite"))  # a cache of the version before `truncated`
    old.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, backend TEXT, model TEXT, prompt TEXT, sampling TEXT, "
                "answer TEXT, created REAL)")
    old.execute("INSERT INTO answers VALUES ('k', 'b', 'm', 'p', '{}', 'TEXT: old', 0)")
    old.commit()
    old.close()
    assert AnswerCache(tmp_path / "old.sqlite").get("k") == Answer("TEXT: old", truncated=False)
    (tmp_path / "bad.sqlite").write_text("not a database")
    with pytest.raises(UserError, match="not a usable answer cache"):
        AnswerCache(tmp_path / "bad.sqlite")


def test_retry_after_takes_seconds_or_a_date_and_is_bounded():
    import email.utils
    import time

    assert retry_after("2") == 2.0 and retry_after("0.5") == 0.5 and retry_after("-3") == 0.0
    assert retry_after("86400") == MAX_RETRY_AFTER_S
    assert 8 <= retry_after(email.utils.formatdate(time.time() + 10, usegmt=True)) <= 10
    assert retry_after(None) is None and retry_after("soon") is None


class ScriptedBackend:
    """Answers from a table (prompt's record text -> answer): the stages after the request, without HTTP."""

    name, model, served, concurrency, max_tokens = "scripted", "table", "table", 4, 512

    def __init__(self, answers):
        self.answers, self.requests = answers, 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        pass

    async def ask(self, prompt, max_tokens):
        self.requests += 1
        text = prompt.rsplit("Japanese text: ", 1)[1].split("\n", 1)[0]
        target = "en" if "into English" in prompt else "zh"
        return Answer(self.answers[(text, target)])


def test_calibration_round_trip_fixes_rejected_records(tmp_path):
    sources = [Source(i, record, "train") for i, (record, _) in enumerate(CASES[:3])]
    answers = {(record.text, t): answer(*translations[t]) for record, translations in CASES[:3] for t in ("en", "zh")}
    answers[(CASES[1][0].text, "en")] = "I cannot translate this."  # unusable
    answers[(CASES[2][0].text, "zh")] = answer("夏目漱石出生于江戸。", ("夏目漱石", "江户"))  # misaligned
    examples = load_examples("ja", ["en", "zh"])
    out = tmp_path / "run1"
    out.mkdir()
    backend = ScriptedBackend(answers)
    translator = Translator(backend, AnswerCache(out / "cache.sqlite"), TABLES, examples)
    outcomes = asyncio.run(translator.run(sources, ["en", "zh"]))
    report = write_outputs(outcomes, out)
    assert report["total"] == {"in": 6, "kept": 4, "rejected": 2}
    rows = [json.loads(line) for line in (out / "review.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["key"], r["language"], r["stage"], r["reason"]) for r in rows] == [
        (1, "en", "answer", "unusable_answer"), (2, "zh", "alignment", "entity_not_in_text")]
    assert rows[0]["translation"] == {"text": "", "label": "",
                                      "items": [["Person", "山田太郎"], ["Corporation", "トヨタ自動車"]]}
    assert rows[0]["source"]["text"] == CASES[1][0].text and rows[0]["answer"] == "I cannot translate this."

    # A person fixes the first row and leaves the second one as it was.
    rows[0]["translation"] = {"text": "Taro Yamada joined Toyota.", "label": "",
                              "items": [["Person", "Taro Yamada"], ["Corporation", "Toyota"]]}
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    calibrated = read_calibrated(edited, [s.record for s in sources])
    assert set(calibrated) == {(1, "en"), (2, "zh")}  # the second row is merged as it stands: still misaligned
    translator = Translator(backend, AnswerCache(out / "cache.sqlite"), TABLES, examples, calibrated)
    outcomes = asyncio.run(translator.run(sources, ["en", "zh"]))
    assert backend.requests == 6  # the second run took every answer from the cache
    fixed = next(o for o in outcomes if o.source.key == 1 and o.target == "en")
    assert fixed.kept and fixed.how == "calibrated"
    assert fmt.render(fixed.translated)[1] == "/NER/:Person;Taro Yamada:Corporation;Toyota"
    still = next(o for o in outcomes if o.source.key == 2 and o.target == "zh")
    assert still.rejection.reason == "entity_not_in_text" and still.rejection.detail.startswith("calibrated: ")

    rows[1]["source"]["text"] = "別の文。"
    edited.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match=r"edited.jsonl:2: key 2 does not name a record"):
        read_calibrated(edited, [s.record for s in sources])


def test_fixes_are_kept_for_later_runs_even_when_made_in_the_review_file_itself(tmp_path):
    sources = [Source(i, record, "train") for i, (record, _) in enumerate(CASES[:3])]
    answers = {(record.text, t): answer(*translations[t]) for record, translations in CASES[:3] for t in ("en", "zh")}
    answers[(CASES[1][0].text, "en")] = "I cannot translate this."
    backend, out = ScriptedBackend(answers), tmp_path / "out"

    def run(calibrated=None) -> dict:
        return translate(sources, ["en", "zh"], backend, out, TABLES, load_examples("ja", ["en", "zh"]), calibrated,
                         progress=False)["total"]

    assert run() == {"in": 6, "kept": 5, "rejected": 1}
    review = out / "review.jsonl"
    row = json.loads(review.read_text(encoding="utf-8"))
    row["translation"] = {"text": "Taro Yamada joined Toyota.", "label": "",
                          "items": [["Person", "Taro Yamada"], ["Corporation", "Toyota"]]}
    review.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")  # edited in place
    assert run(calibrated=review) == {"in": 6, "kept": 6, "rejected": 0}
    assert review.read_text() == ""  # nothing left for a person
    assert run() == {"in": 6, "kept": 6, "rejected": 0}  # later runs apply the fix without being told
    (kept,) = [json.loads(line) for line in (out / CORRECTIONS_FILE).read_text(encoding="utf-8").splitlines()]
    assert kept["translation"]["text"] == "Taro Yamada joined Toyota."
    row["translation"]["text"] = "Taro Yamada joined Toyota in 2020."  # a newer fix of the same record replaces it
    (tmp_path / "newer.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    run(calibrated=tmp_path / "newer.jsonl")
    assert [json.loads(line)["translation"]["text"] for line in (out / CORRECTIONS_FILE).read_text(
        encoding="utf-8").splitlines()] == ["Taro Yamada joined Toyota in 2020."]
    data = "".join(p.read_text(encoding="utf-8") for p in (out / "data").iterdir())
    assert "Taro Yamada joined Toyota in 2020." in data and "joined Toyota./NER" not in data


def published(out: Path) -> dict:
    """Every file a translation run shows in OUT, by its path there; of the report, its totals (how many
    answers came from the cache differs between a run into a new OUT and one into an earlier run's)."""
    files = {}
    for name in PUBLISHED:
        path = out / name
        for file in (sorted(path.iterdir()) if path.is_dir() else [path]):
            files[str(file.relative_to(out))] = file.read_bytes()
    files["report.json"] = json.loads(files["report.json"])["total"]
    del files["report.md"], files["report.png"]  # written from the same numbers
    return files


def test_a_crash_while_writing_leaves_the_previous_files_or_the_new_ones_never_a_mix(tmp_path, monkeypatch):
    from oie_jax.translate import release, run

    sources = [Source(i, record, "train") for i, (record, _) in enumerate(CASES[:3])]
    answers = {(record.text, t): answer(*translations[t]) for record, translations in CASES[:3] for t in ("en", "zh")}
    changed = {**answers, (CASES[0][0].text, "en"): "I cannot translate this."}

    class Changed(ScriptedBackend):
        name = "scripted-2"  # other answers: not those cached

    def translate_into(out, backend):
        return translate(sources, ["en", "zh"], backend, out, TABLES, load_examples("ja", ["en", "zh"]),
                         progress=False)

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash")

    out, clean = tmp_path / "out", tmp_path / "clean"
    translate_into(out, ScriptedBackend(answers))
    before = published(out)
    translate_into(clean, Changed(changed))
    after = published(clean)
    assert before.keys() == after.keys() and before != after
    monkeypatch.setattr(run, "write_report", crash)  # data and review written, the report not
    with pytest.raises(RuntimeError, match="injected"):
        translate_into(out, Changed(changed))
    assert published(out) == before
    monkeypatch.undo()
    monkeypatch.setattr(release.shutil, "rmtree", crash)  # switched, the old release not removed yet
    with pytest.raises(RuntimeError, match="injected"):
        translate_into(out, Changed(changed))
    monkeypatch.undo()
    assert published(out) == after
    translate_into(out, Changed(changed))
    assert published(out) == after and [p.name for p in (out / "releases").iterdir()] == ["4"]


def test_release_file_names_are_those_the_mmm_reader_reads_back():
    from pathlib import Path

    from oie_jax.data.sources.mmm import describe_file

    for split in ("train", "dev", "test"):
        for language in ("en", "zh", "ja"):
            for subset in fmt.SUBSET_TASKS:
                name = release_name(split, language, subset)
                assert describe_file(Path(name)) == (split, language, subset), name
