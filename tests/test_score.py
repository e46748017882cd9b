"""`oie-jax score`: saved predictions against gold records, reports, and clear errors for bad files."""

import dataclasses
import json

import pytest

from oie_jax import cli
from oie_jax.data.format import Record, render
from oie_jax.data.sample import load_sample
from oie_jax.data.sources.registry import write_jsonl
from oie_jax.eval.metrics import score
from oie_jax.eval.predictions import Prediction, pair


@pytest.fixture()
def files(tmp_path):
    """Gold: the sample dev split. Predictions: the gold outputs, every third with a wrong label."""
    golds = load_sample("dev")
    gold_path = tmp_path / "gold.jsonl"
    write_jsonl(golds, gold_path)
    outputs = [("Wrong" + render(g)[1][len(g.label):]) if i % 3 == 0 else render(g)[1] for i, g in enumerate(golds)]
    pred_path = tmp_path / "pred.jsonl"
    write_lines(pred_path, [{"id": g.id, "output": o} for g, o in zip(golds, outputs)])
    return golds, outputs, gold_path, pred_path


def write_lines(path, values):
    path.write_text("".join((v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) + "\n" for v in values),
                    encoding="utf-8")


def run_error(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return code, err[0]


def test_score_prints_the_table_and_writes_reports(files, tmp_path, capsys):
    golds, outputs, gold_path, pred_path = files
    out = tmp_path / "reports"
    code = cli.main(["score", "--gold", str(gold_path), "--pred", str(pred_path), "--report", str(out / "r.md"),
                     "--json", str(out / "r.json"), "--plot", str(out / "r.png")])
    printed = capsys.readouterr().out
    assert code == 0
    expected = score(golds, outputs)
    assert printed.splitlines()[1].split() == ["subset"] + ["TL", "WL", "ALL"] * 3
    assert any(line.startswith("SCPOS:Adj&N ") for line in printed.splitlines())
    assert f"macro/all/f1 = {expected.metric('macro/all/f1'):.4f}" in printed
    report = json.loads((out / "r.json").read_text())
    assert report["metrics"] == pytest.approx(expected.metrics(), abs=1e-6)
    assert report["micro"]["tl"]["tp"] == len(golds) - len(golds[::3])
    assert report["micro"]["wl"]["f1"] == 1.0 and report["notes"] == []
    assert "| SCNM |" in (out / "r.md").read_text()
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_and_unmatched_predictions_are_counted(files, tmp_path, capsys):
    golds, outputs, gold_path, pred_path = files
    lines = pred_path.read_text().splitlines()
    write_lines(pred_path, lines[1:] + [json.dumps({"id": "no-such-id", "output": "x"})])
    code = cli.main(["score", "--gold", str(gold_path), "--pred", str(pred_path), "--json", str(tmp_path / "s.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"1 of {len(golds)} gold examples have no prediction and are scored as empty outputs (ids {golds[0].id})" \
        in printed
    assert f"1 of {len(golds)} predictions match no gold id and are ignored (no-such-id (line {len(golds)}))" in printed
    expected = score(golds, [""] + outputs[1:])  # the missing one scored as an empty output
    assert json.loads((tmp_path / "s.json").read_text())["metrics"] == pytest.approx(expected.metrics(), abs=1e-6)


def test_repeated_gold_ids_pair_in_file_order():
    golds = load_sample("dev")[:3]
    golds = [golds[0], dataclasses.replace(golds[1], id=golds[0].id), golds[2]]
    predictions = [Prediction(golds[0].id, "first", 1), Prediction(golds[2].id, "third", 2),
                   Prediction(golds[0].id, "second", 3)]
    outputs, coverage = pair(golds, predictions)
    assert outputs == ["first", "second", "third"]
    assert coverage.missing == () and coverage.unmatched == () and coverage.repeated_gold_ids == 1


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "output": ', "pred.jsonl:2: malformed JSON"),
    ('["a", "b"]', "pred.jsonl:2: not a JSON object"),
    ('{"output": "x"}', "pred.jsonl:2: id: missing field"),
    ('{"id": "a"}', "pred.jsonl:2: output: missing field"),
    ('{"id": "a", "output": null}', "pred.jsonl:2: output: expected a string, got null"),
    ('{"id": [1], "output": "x"}', "pred.jsonl:2: id: expected a string or an integer"),
])
def test_bad_prediction_lines_name_file_line_and_field(files, capsys, line, message):
    _, _, gold_path, pred_path = files
    first = pred_path.read_text().splitlines()[0]
    write_lines(pred_path, [first, line])
    code, err = run_error(capsys, "score", "--gold", str(gold_path), "--pred", str(pred_path))
    assert code == 2 and message in err


def test_missing_files_and_unrelated_predictions(files, tmp_path, capsys):
    _, _, gold_path, pred_path = files
    code, err = run_error(capsys, "score", "--gold", str(gold_path), "--pred", str(tmp_path / "none.jsonl"))
    assert code == 2 and "none.jsonl" in err and "predictions file not found" in err
    code, err = run_error(capsys, "score", "--gold", str(tmp_path / "nogold.jsonl"), "--pred", str(pred_path))
    assert code == 2 and "nogold.jsonl" in err
    write_lines(pred_path, [{"id": "other-1", "output": "x"}, {"id": "other-2", "output": "y"}])
    code, err = run_error(capsys, "score", "--gold", str(gold_path), "--pred", str(pred_path))
    assert code == 2 and "none of the 2 predictions has the id of a gold record" in err and "pred.jsonl" in err


def test_unknown_metric_and_directory_outputs(files, tmp_path, capsys):
    _, _, gold_path, pred_path = files
    code = cli.main(["score", "--gold", str(gold_path), "--pred", str(pred_path), "--metric", "macro/all/acc"])
    assert code == 2 and "no metric 'macro/all/acc'" in capsys.readouterr().err
    code = cli.main(["score", "--gold", str(gold_path), "--pred", str(pred_path), "--report", str(tmp_path)])
    assert code == 2 and "output is a directory" in capsys.readouterr().err


def test_every_gold_record_is_scored_and_inconsistent_ones_are_named(files, tmp_path, capsys):
    golds, outputs, gold_path, pred_path = files
    # A translation that lost its entity and an empty text: training would leave them out, a score never.
    odd = [Record(text="Kyoto is old.", task="NER", label="Travel", items=(("Location", "Paris"),), id="odd1",
                  subset="SCNM", language="en"),
           Record(text=" ", task="NER", label="Travel", id="odd2", subset="SCNM", language="en")]
    odd_outputs = ["Travel/NER/:Location;Paris", "Travel/NER/"]
    write_jsonl(golds + odd, gold_path)
    write_lines(pred_path, [{"id": g.id, "output": o} for g, o in zip(golds + odd, outputs + odd_outputs)])
    code = cli.main(["score", "--gold", str(gold_path), "--pred", str(pred_path), "--json", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 0 and "2 gold records are inconsistent and are scored as they are" in err
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["examples"] == len(golds) + 2
    assert report["metrics"] == pytest.approx(score(golds + odd, outputs + odd_outputs).metrics(), abs=1e-6)
    code, err = run_error(capsys, "score", "--gold", str(gold_path), "--pred", str(pred_path), "--strict")
    assert code == 2 and f"gold.jsonl:{len(golds) + 1}: items: entity not in text ('Paris')" in err
    # A line that holds no record cannot be scored: an error, not a smaller score.
    write_lines(gold_path, gold_path.read_text().splitlines() + ['{"id": "bad", "text": "abc", "task": "Unknown"}'])
    code, err = run_error(capsys, "score", "--gold", str(gold_path), "--pred", str(pred_path))
    assert code == 2 and "1 gold record(s) cannot be read" in err and f"gold.jsonl:{len(golds) + 3}: task" in err
