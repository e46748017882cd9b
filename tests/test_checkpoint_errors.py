"""Resume never mistakes a failing storage for a damaged checkpoint: a timeout, a permission error or a
step directory that vanishes while it is read stops the run with a line naming the step, on one process
and on two, and leaves checkpoints/ and best/ as they were; only a step that is provably damaged (its
metadata does not parse) is skipped. Errors are injected by a flaky filesystem (tests/flaky_fs.py) or by
really moving the directory away."""

import shutil

import orbax.checkpoint as ocp
import pytest

from oie_jax.errors import UserError
from oie_jax.train.loop import Run
from oie_jax.train.runs import train
from tests import flaky_fs
from tests.test_train_loop import tiny, two_processes

STEPS = {"train.steps": 4, "checkpoint.every": 2, "eval.every": 2}


def steps_of(directory) -> list[int]:
    return sorted(ocp.CheckpointManager(directory).all_steps())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 4 steps: checkpoints 2 and 4, best/4 (the dev loss fell)."""
    workdir = tmp_path_factory.mktemp("finished")
    assert train(tiny(**STEPS), workdir).step == 4
    assert steps_of(workdir / "checkpoints") == [2, 4] and steps_of(workdir / "best") == [4]
    return workdir


@pytest.fixture
def workdir(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.mark.parametrize("kind,shown", [("timeout", "TimeoutError: reading"), ("permission", "PermissionError")])
def test_a_storage_error_on_the_newest_step_stops_the_run_and_keeps_best(workdir, monkeypatch, kind, shown):
    flaky_fs.install(r"checkpoints/4/state/_METADATA$", kind, monkeypatch.setattr)
    with pytest.raises(UserError, match=f"checkpoint step 4: its metadata cannot be read \\({shown}"):
        Run(tiny(**{**STEPS, "train.steps": 6}), workdir)
    assert steps_of(workdir / "checkpoints") == [2, 4] and steps_of(workdir / "best") == [4]


def test_a_step_directory_that_vanishes_while_it_is_read_stops_the_run(workdir, monkeypatch):
    listed = ocp.CheckpointManager.all_steps

    def listed_then_gone(self, *args, **kwargs):  # the mount goes away between listing and reading
        steps = listed(self, *args, **kwargs)
        if self.directory.name == "checkpoints" and (self.directory / "4").exists():
            shutil.move(self.directory, workdir / "elsewhere")
        return steps

    monkeypatch.setattr(ocp.CheckpointManager, "all_steps", listed_then_gone)
    with pytest.raises(UserError, match="checkpoint step 4 was listed and is gone"):
        Run(tiny(**{**STEPS, "train.steps": 6}), workdir)
    assert steps_of(workdir / "best") == [4]


def test_a_step_whose_metadata_does_not_parse_is_damaged_and_skipped(workdir, capsys):
    (workdir / "checkpoints" / "4" / "state" / "_METADATA").write_text('{"tree_metadata": ')
    outcome = train(tiny(**{**STEPS, "train.steps": 6}), workdir)
    out = capsys.readouterr().out
    assert "checkpoint step 4 is damaged: its state cannot be read (JSONDecodeError" in out
    assert "resuming from step 2" in out and min(outcome.losses) == 3


def test_on_two_processes_a_timeout_stops_both_with_the_step_named(tmp_path):
    assert train(tiny(**{"train.steps": 2, "checkpoint.every": 2}), tmp_path).step == 2
    best = steps_of(tmp_path / "best")
    flaky = ("-m", "tests.flaky_fs", r"checkpoints/2/state/_METADATA$", "timeout")
    statuses, errors = two_processes(tmp_path, "--config.train.steps=4", command=flaky, offset=3100)
    assert statuses == [2, 2], [e[-2000:] for e in errors]
    for error in errors:
        assert "checkpoint step 2: its metadata cannot be read (TimeoutError" in error.strip().splitlines()[-1]
    assert "on process 0: " in errors[1]
    assert steps_of(tmp_path / "checkpoints") == [2] and steps_of(tmp_path / "best") == best
