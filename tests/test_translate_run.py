"""`oie-jax translate` end to end over real HTTP on 127.0.0.1: against a small server that injects
faults (500, 429, timeouts, truncated JSON, answers in the wrong layout, 400), and against
`oie-jax serve` killed and restarted; the translated files then train."""

import asyncio
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from oie_jax import cli
from oie_jax.data.format import Record
from tests.helpers import save_tiny_smollm2
from tests.test_serve import server
from tests.translation_cases import CASES, answer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STOCKMARK = SHARED / "stockmark-ner" / "ner_train.json"
MAGIC = Record("魔法使いが来た。", "NER", items=(("魔法名", "魔法使い"),), id="magic", language="ja", subset="SCNM")


class FaultServer:
    """An OpenAI-compatible chat endpoint in a thread whose answer for each record follows `behaviour`
    (record id, or (record id, language), -> what each attempt gets); `healed` ids answer well from then on.
    Counts requests."""

    def __init__(self, behaviour: dict[str, list[str]]):
        self.behaviour, self.healed = behaviour, set()
        self.requests: collections.Counter = collections.Counter()
        self.asked: dict[tuple[str, str], list[tuple[float, int]]] = {}  # (when, max_tokens) of each request
        self.by_text = {record.text: (record.id, translations) for record, translations in CASES}
        self.by_text[MAGIC.text] = (MAGIC.id, {})

    async def chat(self, request):
        body = await request.json()
        prompt = body["messages"][0]["content"]
        text = prompt.rsplit("Japanese text: ", 1)[1].split("\n", 1)[0]
        target = "en" if "into English" in prompt else "zh"
        record_id, translations = self.by_text[text]
        attempt = self.requests[(record_id, target)]
        self.requests[(record_id, target)] += 1
        self.asked.setdefault((record_id, target), []).append((time.monotonic(), body["max_tokens"]))
        script = self.behaviour.get((record_id, target), self.behaviour.get(record_id, ["ok"]))
        script = ["ok"] if record_id in self.healed else script
        action = script[min(attempt, len(script) - 1)]
        good = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer(*translations[target])},
                             "finish_reason": "stop"}]}
        if action == "ok":
            return web.json_response(good)
        if action == "slow":
            await asyncio.sleep(6)  # past the client's timeout (--timeout 2)
            return web.json_response(good)
        if action == "truncated":
            return web.Response(text=json.dumps(good)[:40], content_type="application/json")
        if action == "length":  # the token budget ended the answer
            content = answer(*translations[target])
            return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content":
                                                   content[:len(content) // 2]}, "finish_reason": "length"}]})
        if action == "429-retry-after":
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "1"})
        if action == "layout":
            wrong = dict(good, choices=[{"index": 0, "message": {"role": "assistant", "content": "Sure! " + text}}])
            return web.json_response(wrong)
        return web.json_response({"error": {"message": f"injected {action}"}}, status=int(action))

    def __enter__(self):
        started = threading.Event()

        def serve():
            self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.add_routes([web.post("/v1/chat/completions", self.chat)])
            self.runner = web.AppRunner(app)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        started.wait(30)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def write_records(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_record_ends_kept_rejected_with_a_reason_or_asked_again_and_the_output_trains(tmp_path, capsys):
    corpus = write_records(tmp_path / "ja_train.jsonl", [record for record, _ in CASES] + [MAGIC])
    behaviour = {"joined": ["429-retry-after", "ok"], "soseki": ["429", "429", "ok"],
                 "election": ["slow", "length", "ok"], "movie": ["truncated", "ok"], "sunny": ["layout"],
                 "station": ["503"], "graduate": ["400"], ("tower", "zh"): ["length"]}
    out = tmp_path / "out"
    flags = ["translate", str(corpus), "--to", "en,zh", "--out", str(out), "--retries", "2", "--backoff", "0.01",
             "--timeout", "2", "--no-progress"]
    with FaultServer(behaviour) as fault:
        flags += ["--endpoint", fault.url, "--model", "scripted"]
        assert cli.main([*flags, "--estimate"]) == 0  # asks nothing, writes nothing
        assert not fault.requests and not out.exists()
        assert "en: 8 requests (1 records with an unknown label are not asked)" in capsys.readouterr().out
        assert cli.main(flags) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["total"] == {"in": 18, "kept": 9, "rejected": 9}
        assert all(g["in"] == g["kept"] + g["rejected"] == g["kept"] + sum(
            n for reasons in g["by_stage"].values() for n in reasons.values()) for g in report["groups"])
        review = [json.loads(line) for line in (out / "review.jsonl").read_text(encoding="utf-8").splitlines()]
        assert sorted((r["id"], r["language"], r["stage"], r["reason"]) for r in review) == sorted(
            (record_id, language, stage, reason) for language in ("en", "zh") for record_id, stage, reason in (
                ("sunny", "answer", "unusable_answer"), ("station", "answer", "request_failed"),
                ("graduate", "answer", "request_refused"), ("magic", "labels", "unknown_label"))) + [
            ("tower", "zh", "answer", "truncated")]
        station = next(r for r in review if r["id"] == "station")
        assert "HTTP 503: injected 503 (after 3 attempts)" in station["detail"]
        per_record = {key: n for key, n in fault.requests.items() if key[1] == "en"}
        assert per_record == {("tower", "en"): 1, ("joined", "en"): 2, ("soseki", "en"): 3, ("election", "en"): 3,
                              ("movie", "en"): 2, ("sunny", "en"): 1, ("station", "en"): 3, ("graduate", "en"): 1}
        # A cut answer is asked once more with twice the budget (kept when that one ends, rejected when not).
        assert [tokens for _, tokens in fault.asked["election", "en"]] == [512, 512, 1024]
        assert [tokens for _, tokens in fault.asked["tower", "zh"]] == [512, 1024]
        (first, _), (second, _) = fault.asked["joined", "en"]
        assert second - first >= 0.9  # Retry-After: 1, not the 0.01 s backoff

        # The endpoint recovers: the next run asks only for what failed, and --strict fails on what stays rejected.
        fault.healed |= {"station", "graduate"}
        before = sum(fault.requests.values())
        assert cli.main([*flags, "--strict"]) == 1
        assert sum(fault.requests.values()) - before == 4  # station and graduate, in two languages
        report = json.loads((out / "report.json").read_text())
        assert report["total"] == {"in": 18, "kept": 13, "rejected": 5}
        assert report["answers"] == {"asked": 4, "cached": 12, "calibrated": 0, "unasked": 2}
    assert "5 records rejected (--strict)" in capsys.readouterr().err

    # The release files read back unchanged and train.
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == ["Train_Ch_0_SCNM_dataset.json", "Train_Ch_3_SCPOS_Adj_dataset.json",
                     "Train_Ch_5_TCREE_dataset.json", "Train_En_0_SCNM_dataset.json",
                     "Train_En_3_SCPOS_Adj_dataset.json", "Train_En_5_TCREE_dataset.json"]
    from oie_jax.data.sources.registry import load_source

    source, loaded = load_source([str(out / "data")])
    assert source == "mmm" and len(loaded.records) == 13 and not loaded.problems
    tower = next(r for r in loaded.records if r.language == "en" and r.text.startswith("Tokyo Tower"))
    assert tower.items == (("Facility", "Tokyo Tower"), ("Location", "Minato, Tokyo")) and tower.subset == "SCNM"
    election = next(r for r in loaded.records if r.language == "zh" and r.task == "Event Extraction")
    assert (election.label, election.items) == ("政治", (("选举", "选举", "田中"),))
    workdir = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_debug.py"
    assert cli.main(["train", "--config", str(config), "--workdir", str(workdir),
                     f"--config.data.train={out / 'data'}", "--config.data.dev=", "--config.train.steps=3",
                     "--config.checkpoint.every=3", "--config.eval.every=0",
                     "--config.checkpoint.best_metric="]) == 0
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)


def test_the_in_process_backend_asks_cut_answers_again_and_other_weights_anew(tiny_smollm2_dir,
                                                                               smollm2_hf_dir, tmp_path):
    import shutil

    corpus = write_records(tmp_path / "ja_train.jsonl", [record for record, _ in CASES[:3]])
    model, out = tmp_path / "model", tmp_path / "out"
    shutil.copytree(tiny_smollm2_dir, model)
    flags = ["translate", str(corpus), "--to", "en", "--local", str(model), "--out", str(out), "--max-tokens", "8",
             "--no-progress"]

    def answers() -> dict:
        assert cli.main(flags) == 0
        return json.loads((out / "report.json").read_text())["answers"]

    assert answers()["asked"] == 3
    with sqlite3.connect(out / "cache.sqlite") as db:  # a random model's answers run to the budget: asked again
        budgets = sorted(json.loads(row[0])["max_tokens"] for row in db.execute("SELECT sampling FROM answers"))
        (served,) = {row[0] for row in db.execute("SELECT model FROM answers")}
    assert budgets.count(8) == 3 and budgets.count(16) >= 1 and served.startswith("model (sha256:")
    review = [json.loads(line) for line in (out / "review.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "truncated" in {row["reason"] for row in review}
    assert answers() == {"asked": 0, "cached": 3, "calibrated": 0, "unasked": 0}
    # Other weights under the same directory and name: nothing cached is theirs.
    other = save_tiny_smollm2(smollm2_hf_dir, tmp_path / "other-hf", tmp_path / "other", 6)
    shutil.rmtree(model / "params")
    shutil.copytree(other / "params", model / "params")
    assert answers()["asked"] == 3


def cached_answers(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'cache.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.skipif(not STOCKMARK.is_file(), reason=f"needs the stockmark corpus at {STOCKMARK}")
def test_a_run_killed_and_restarted_asks_only_what_was_not_answered_and_writes_the_same_files(
        tiny_smollm2_dir, tmp_path):
    import urllib.request

    def served_requests(url):
        with urllib.request.urlopen(url + "/health") as response:
            return json.load(response)["requests"]

    records, languages = 25, ("en", "zh")

    def command(out):
        return [sys.executable, "-m", "oie_jax.cli", "translate", "--from", "stockmark", str(STOCKMARK),
                "--to", ",".join(languages), "--endpoint", url + "/v1", "--model", tiny_smollm2_dir.name,
                "--out", str(out), "--limit", str(records), "--max-tokens", "24", "--concurrency", "4", "--no-progress"]

    # --batch-size 1: each answer depends on its prompt alone, whatever else is asked at the same time.
    with server(tiny_smollm2_dir, "--batch-size", "1") as (url, _):
        killed = tmp_path / "killed"
        process = subprocess.Popen(command(killed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ))
        deadline = time.monotonic() + 300
        while cached_answers(killed) < 30:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "no answers in 300 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        answered = cached_answers(killed)
        asked_before = served_requests(url)
        finished = subprocess.run(command(killed), capture_output=True, text=True, env=dict(os.environ))
        assert finished.returncode == 0, finished.stderr
        distinct = cached_answers(killed)
        # a cut answer is asked again with twice the budget: two per question
        assert answered < distinct <= 2 * records * len(languages)
        assert served_requests(url) - asked_before == distinct - answered  # nothing asked twice

        whole = tmp_path / "whole"
        asked_before = served_requests(url)
        assert subprocess.run(command(whole), capture_output=True, env=dict(os.environ)).returncode == 0
        assert served_requests(url) - asked_before == distinct
    for name in ("review.jsonl",) + tuple(f"data/{p.name}" for p in (whole / "data").iterdir()):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert sorted(p.name for p in (killed / "data").iterdir()) == sorted(p.name for p in (whole / "data").iterdir())
    from oie_jax.models.directory import weights_fingerprint

    with sqlite3.connect(killed / "cache.sqlite") as db:  # keyed by what /v1/models says is served: these weights
        served = {row[0] for row in db.execute("SELECT model FROM answers")}
    assert served == {f"{tiny_smollm2_dir.name} ({weights_fingerprint(tiny_smollm2_dir)})"}
    killed_report, whole_report = (json.loads((d / "report.json").read_text()) for d in (killed, whole))
    assert killed_report["groups"] == whole_report["groups"]
    assert killed_report["total"]["in"] == records * len(languages)
    assert (killed / "report.png").read_bytes()[:4] == b"\x89PNG"
