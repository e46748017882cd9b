"""Training runs that learn: a tiny model learns an easy copy task with dev F1 choosing best/, best/
and model/ hold the peak, every step exports, and two JAX processes fine-tune it like one. Apart from
test_train_loop.py so that pytest-xdist runs the two long files side by side."""

import itertools
import os
import random
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath
from flax import nnx

from oie_jax.data.format import Record
from oie_jax.data.sources.registry import write_jsonl
from oie_jax.data.tokenizer import ByteTokenizer
from oie_jax.eval.evaluate import evaluate
from oie_jax.models.checkpoint import load_model
from oie_jax.train.checkpointing import Checkpoints
from oie_jax.train.loop import Run
from oie_jax.train.metrics_log import read_metrics
from oie_jax.train.runs import train
from tests.helpers import xla_flags
from tests.metrics_reference import reference_metrics
from tests.test_train_loop import ROOT, TINY, cli, losses, tiny

# An easy synthetic task: "NAME visited CITY." -> "Travel/NER/:Person;NAME:Location;CITY". The dev set holds
# pairs never seen in training, so the model must copy both names from the text.
NAMES = ("Ann", "Bob", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana")
CITIES = ("Rome", "Oslo", "Lima", "Kyoto", "Paris", "Cairo", "Quito", "Delhi")
LEARN_STEPS = 200


def visits() -> list[Record]:
    pairs = list(itertools.product(NAMES, CITIES))
    random.Random(0).shuffle(pairs)
    return [Record(text=f"{name} visited {city}.", task="NER", label="Travel",
                   items=(("Person", name), ("Location", city)), id=f"v{i}", subset="SCNM", language="en")
            for i, (name, city) in enumerate(pairs)]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The tiny random model trained on the easy task, dev F1 every 50 steps choosing best/."""
    directory = tmp_path_factory.mktemp("learned")
    records = visits()
    write_jsonl(records[:48], directory / "train.jsonl")
    write_jsonl(records[48:], directory / "dev.jsonl")
    config = tiny(**{"data.train": str(directory / "train.jsonl"), "data.dev": str(directory / "dev.jsonl"),
                     "data.seq_len": 128, "data.batch_size": 16, "train.steps": LEARN_STEPS, "train.lr": 4e-3,
                     "train.warmup_fraction": 0.1, "train.decay": "cosine", "eval.every": 0, "eval.f1_every": 50,
                     "eval.max_new_tokens": 48, "eval.batch_size": 16, "checkpoint.best_metric": "macro/all/f1",
                     "checkpoint.best_mode": "max", "checkpoint.every": 50, "export.model": True, "log.every": 25})
    outcome = train(config, directory / "run")
    return directory / "run", outcome, records[48:]


def test_a_tiny_model_learns_an_easy_task_and_dev_f1_picks_best(learned):
    run_dir, outcome, dev = learned
    f1 = {m["step"]: m["macro/all/f1"] for m in read_metrics(run_dir) if "macro/all/f1" in m}
    assert sorted(f1) == [0, 50, 100, 150, 200]
    assert f1[0] < 0.1 and max(f1.values()) >= 0.9, f1
    best = max(step for step, value in f1.items() if value == max(f1.values()))  # a tie keeps the later step
    assert [p.name for p in (run_dir / "best").iterdir()] == [str(best)] and outcome.exported_step == best
    # WORKDIR/model holds best/'s parameters: generating with them gives the logged F1, which the plain-Python
    # reference computes from the same outputs.
    outputs, scores = evaluate(load_model(run_dir / "model"), ByteTokenizer(), dev,
                               max_new_tokens=48, progress=False, log=lambda _: None)
    assert scores.metric("macro/all/f1") == pytest.approx(f1[best])
    _, reference = reference_metrics(dev, outputs)
    assert reference == pytest.approx(scores.metrics())


def test_constrained_decoding_keeps_every_output_that_was_already_valid(learned):
    """The run stores its training labels with the model; decoding constrained to them (and to entities of
    the input) gives the outputs of free greedy decoding wherever those were valid already."""
    from oie_jax.data import format as fmt
    from oie_jax.data.labels import label_set_for, label_sets, model_label_sets
    from oie_jax.infer import constrain

    run_dir, _, dev = learned
    labels = model_label_sets(run_dir / "model")
    assert labels == label_sets(visits()[:48])
    model = load_model(run_dir / "model")
    free, _ = evaluate(model, ByteTokenizer(), dev, max_new_tokens=48, progress=False, log=lambda _: None)
    constrained, _ = evaluate(model, ByteTokenizer(), dev, max_new_tokens=48, progress=False, log=lambda _: None,
                              labels=labels)
    automata = [constrain.automaton(r.text, r.task, label_set_for(labels, r.task, r.language)) for r in dev]
    valid = [constrain.accepts(auto, output.encode()) for auto, output in zip(automata, free)]
    assert sum(valid) >= len(dev) // 2, free  # the learned model writes valid outputs on its own
    for ok, before, after in zip(valid, free, constrained):
        if ok:
            assert after == before
    assert all(fmt.parse(output, "NER").well_formed for output in constrained)


def test_bfloat16_decoding_scores_within_half_a_point_of_float32(learned):
    """--dtype bfloat16 of the generating commands loads the weights in bfloat16 (half the bytes a decoding
    step reads) and computes in it; the learned model's dev F1 stays within 0.5 points of float32."""
    from oie_jax.infer.predict import load_for_generation

    run_dir, _, dev = learned
    f1 = {}
    for dtype in ("float32", "bfloat16"):
        model, tokenizer, _ = load_for_generation(run_dir / "model", dtype)
        assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jax.numpy.dtype(dtype)}
        _, scores = evaluate(model, tokenizer, dev, max_new_tokens=48, progress=False, log=lambda _: None)
        f1[dtype] = scores.metric("macro/all/f1")
    assert f1["float32"] >= 0.9 and abs(f1["bfloat16"] - f1["float32"]) <= 0.005, f1


@pytest.mark.parametrize("constrained", [True, False])
def test_dev_f1_decodes_as_eval_will(tmp_path, capsys, constrained):
    """A random model writes no text label of the training data when it decodes freely; constrained to the
    run's label sets (one text label here) it can only write that one, so dev TL F1 is 1 exactly when dev F1
    decodes as `oie-jax eval` does by default."""
    records = visits()
    write_jsonl(records[:48], tmp_path / "train.jsonl")
    write_jsonl(records[48:], tmp_path / "dev.jsonl")
    config = tiny(**{"data.train": str(tmp_path / "train.jsonl"), "data.dev": str(tmp_path / "dev.jsonl"),
                     "train.steps": 1, "eval.every": 0, "eval.f1_every": 1, "eval.max_new_tokens": 16,
                     "eval.constrained": constrained})
    train(config, tmp_path / "run")
    f1 = {m["step"]: m["macro/tl/f1"] for m in read_metrics(tmp_path / "run") if "macro/tl/f1" in m}
    assert sorted(f1) == [0, 1]
    assert (f1[0] == 1.0) == constrained, f1
    shown = "constrained to the format and the training labels" if constrained else "free (eval.constrained=False)"
    assert f"records, decoding {shown}" in capsys.readouterr().out


def reference_budget(lengths: list[int], cut: float = 0.005) -> int:
    """The least multiple of 8 (at least 8) that at most `cut` of the lengths exceed, by counting."""
    budget = 8
    while sum(n > budget for n in lengths) > cut * len(lengths):
        budget += 8
    return budget


def test_the_generation_budget_comes_from_the_data_and_travels_with_the_model(tmp_path, capsys):
    from oie_jax.data.format import render
    from oie_jax.infer.budget import OutputLengths, model_budget

    records = visits()
    write_jsonl(records[:48], tmp_path / "train.jsonl")
    write_jsonl(records[48:], tmp_path / "dev.jsonl")
    lengths = [len(render(r)[1].encode()) for r in records]  # the tiny config's tokenizer: one token per byte
    expected = reference_budget(lengths)
    overrides = {"data.train": str(tmp_path / "train.jsonl"), "data.dev": str(tmp_path / "dev.jsonl"),
                 "train.steps": 1, "eval.every": 0, "eval.f1_every": 1, "export.model": True}
    train(tiny(**overrides, **{"eval.max_new_tokens": 0}), tmp_path / "run")
    assert (f"generate at most {expected} new tokens (eval.max_new_tokens=0: the fewest that hold 99.5% of the 64 "
            "train+dev gold outputs") in capsys.readouterr().out
    assert model_budget(tmp_path / "run" / "model") == expected
    spread = lengths * 4 + list(range(1, 300, 7))  # the budget of any share, against counting
    for n in (0, 1, 5, 8, 33, 40, 47, 300):
        assert OutputLengths(np.sort(spread), "").budget(n / 1000) == reference_budget(spread, n / 1000)

    run = Run(tiny(**overrides, **{"eval.max_new_tokens": 16}), tmp_path / "short")
    assert "warning: 64 of 64 train+dev gold outputs (100.0%) need more than max_new_tokens=16" in run.budget_line()
    lines = []
    evaluate(load_model(tmp_path / "run" / "model"), ByteTokenizer(), records[48:52], max_new_tokens=16,
             progress=False, log=lines.append)
    assert lines[0].startswith("warning: 4 of 4 gold outputs (100.0%) need more than max_new_tokens=16 tokens")
    assert "4 outputs ended by the budget, not the model" in lines[1]


def test_best_keeps_the_later_of_equal_values_and_never_a_worse_one(tmp_path):
    params = {"w": np.arange(4, dtype=np.float32)}
    for mode, values in (("max", (0.5, 0.5, 0.4)), ("min", (0.5, 0.5, 0.6))):
        settings = tiny(**{"checkpoint.best_metric": "macro/all/f1", "checkpoint.best_mode": mode}).checkpoint
        checkpoints = Checkpoints(epath.Path(tmp_path / mode), settings)
        kept = [checkpoints.offer_best(step, params, {"macro/all/f1": value}, {})
                for step, value in zip((1, 2, 3), values)]
        checkpoints.close()
        assert kept == [True, True, False] and checkpoints.best_so_far == (2, 0.5)
        assert [p.name for p in (tmp_path / mode / "best").iterdir()] == ["2"]


def test_best_and_model_hold_the_step_where_dev_f1_peaked_before_the_end(learned, tmp_path):
    """Fine-tuning the learned model with a destructive learning rate: its first update has learning rate 0
    (warmup), so steps 0 and 1 tie at the peak and step 1 is kept; later evaluations are worse."""
    run_dir, _, _ = learned
    config = tiny(**{"model.init": str(run_dir / "model"), "data.train": str(run_dir.parent / "train.jsonl"),
                     "data.dev": str(run_dir.parent / "dev.jsonl"), "data.seq_len": 128, "data.batch_size": 16,
                     "train.steps": 4, "train.lr": 1.0, "train.warmup_fraction": 0.5, "train.decay": "constant",
                     "eval.every": 0, "eval.f1_every": 1, "eval.max_new_tokens": 48,
                     "checkpoint.best_metric": "macro/all/f1", "checkpoint.best_mode": "max", "checkpoint.every": 0,
                     "export.model": True})
    outcome = train(config, tmp_path)
    f1 = {m["step"]: m["macro/all/f1"] for m in read_metrics(tmp_path) if "macro/all/f1" in m}
    assert f1[0] == f1[1] == max(f1.values()) and f1[4] < f1[1], f1
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["1"] and outcome.exported_step == 1
    before, after = load_model(run_dir / "model"), load_model(tmp_path / "model")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(before)),
                                                    jax.tree.leaves(nnx.state(after))))


def test_export_any_step_of_a_run(learned, tmp_path, capsys):
    from oie_jax import cli
    from oie_jax.models.checkpoint import load_config, load_params

    run_dir, outcome, _ = learned
    assert cli.main(["export", str(run_dir), str(tmp_path / "best")]) == 0
    assert f"the parameters of step {outcome.exported_step} (best/{outcome.exported_step})" in capsys.readouterr().out
    cfg = load_config(run_dir / "model")
    exported, model = load_params(tmp_path / "best", cfg), load_params(run_dir / "model", cfg)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(model)))
    assert cli.main(["export", str(run_dir), str(tmp_path / "latest"), "--from", "latest"]) == 0
    assert cli.main(["export", str(run_dir), str(tmp_path / "hf"), "--from", "150", "--format", "hf"]) == 0
    printed = capsys.readouterr().out
    assert f"the parameters of step {LEARN_STEPS} (checkpoints/{LEARN_STEPS})" in printed
    assert "the parameters of step 150 (checkpoints/150)" in printed
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "config.json").is_file()
    assert cli.main(["export", str(run_dir), str(tmp_path / "x"), "--from", "7"]) == 2
    assert "no step 7 in this run" in capsys.readouterr().err
    assert cli.main(["export", str(run_dir), str(tmp_path / "x"), "--format", "peft"]) == 2
    assert "--format peft writes LoRA adapters, and this run fine-tuned the whole model" in capsys.readouterr().err
    # best/ exports on its own (a run copied without its checkpoints/).
    shutil.copytree(run_dir / "best", tmp_path / "best_only" / "best")
    assert cli.main(["export", str(tmp_path / "best_only"), str(tmp_path / "alone")]) == 0, capsys.readouterr().err
    alone = load_params(tmp_path / "alone", cfg)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(model)))
    # A best/ step saved without the run config (older runs) takes the one of checkpoints/.
    shutil.copytree(run_dir, tmp_path / "older", ignore=shutil.ignore_patterns("compilation_cache"))
    shutil.rmtree(tmp_path / "older" / "best" / str(outcome.exported_step) / "config")
    assert cli.main(["export", str(tmp_path / "older"), str(tmp_path / "older_best")]) == 0


def test_two_processes_train_evaluate_checkpoint_and_resume_like_one(learned, tmp_path):
    """2 processes x 2 CPU devices (gloo, started by launch/local.sh): fsdp=4 laid out as 2 per process
    (ICI) x 2 processes (DCN), fine-tuning the learned model of the easy task with dev loss and dev F1
    (generation split over both processes). 4 steps, then a second launch extends the run to 6; losses
    and F1 equal one process on 4 devices."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")
    port = 21000 + os.getpid() % 9000
    run_dir, _, _ = learned
    common = [f"--config.model.init={run_dir / 'model'}", f"--config.data.train={run_dir.parent / 'train.jsonl'}",
              f"--config.data.dev={run_dir.parent / 'dev.jsonl'}", "--config.data.seq_len=128",
              "--config.eval.every=2", "--config.eval.f1_every=4", "--config.eval.max_new_tokens=48",
              "--config.checkpoint.every=2", "--config.checkpoint.best_metric=macro/wl/f1",
              "--config.checkpoint.best_mode=max"]

    def launch(steps, port):
        """The two processes started by launch/local.sh, as a user rehearses a pod run."""
        logs = tmp_path / f"logs-{steps}"
        result = subprocess.run(
            ["bash", str(ROOT / "launch" / "local.sh"), "2", sys.executable, "-m", "oie_jax.cli", "train", "--config",
             str(TINY), "--workdir", str(tmp_path / "multi"), f"--config.train.steps={steps}", *common,
             "--config.mesh.shape=(1, 2, 1)", "--config.mesh.dcn_shape=(1, 2, 1)"],
            cwd=ROOT, env=dict(env, PORT=str(port), DEVICES_PER_PROCESS="2", LOG_DIR=str(logs)), capture_output=True,
            text=True, timeout=600)
        other = (logs / "process-1.log").read_text()
        assert result.returncode == 0, (result.stderr[-3000:], other[-3000:])
        # One voice: evaluation lines come from process 0 only.
        assert "dev_loss" in result.stdout and "dev_loss" not in other, other
        return result.stdout

    launch(4, port)
    assert "resuming from step 4" in launch(6, port + 1)
    one = cli("--config", TINY, "--workdir", tmp_path / "one", "--config.train.steps=6", *common,
              "--config.mesh.shape=(1, 4, 1)", env=dict(env, XLA_FLAGS=xla_flags(4)))
    assert one.returncode == 0, one.stderr[-2000:]
    multi, single = losses(tmp_path / "multi"), losses(tmp_path / "one")
    assert sorted(multi) == list(range(1, 7))
    np.testing.assert_allclose([multi[s] for s in range(1, 7)], [single[s] for s in range(1, 7)], rtol=1e-5)

    def dev_f1(workdir):
        return {m["step"]: m["macro/wl/f1"] for m in read_metrics(workdir) if "macro/wl/f1" in m}

    assert sorted(dev_f1(tmp_path / "multi")) == [0, 4, 6] and min(dev_f1(tmp_path / "multi").values()) > 0.5
    assert dev_f1(tmp_path / "multi") == dev_f1(tmp_path / "one")
