"""`oie-jax sweep`: one real `oie-jax train` process per setting, each the start of its full run, and the
table of where each ended read back from the runs' own metrics."""

import pytest

from oie_jax.errors import UserError
from oie_jax.train.metrics_log import read_metrics
from oie_jax.train.sweep import TABLE_FILE, settings, sweep
from tests.test_train_loop import TINY


def test_a_sweep_runs_each_setting_on_its_full_schedule_and_tables_where_each_ended(tmp_path):
    fixed = [("train.steps_limit", "4"), ("train.decay", "cosine"), ("log.every", "1")]
    # Two processes: a grid of one value and a single run (the grid's combinations: the test below).
    results = sweep(str(TINY), tmp_path, fixed, ["train.lr=1e-3"], ["train.lr=3e-3 train.lora.rank=4"],
                    say=lambda line: None)
    assert [r.setting.name for r in results] == ["lr=1e-3", "lr=3e-3,lora.rank=4"]
    rates = {}
    for result in results:
        metrics = read_metrics(tmp_path / result.setting.name)
        assert result.status == 0 and result.step == 4
        assert result.dev_loss == [m["dev_loss"] for m in metrics if "dev_loss" in m][-1]
        rates[result.setting.name] = [m["lr"] for m in metrics if "lr" in m]
    # The 12-step schedule of the full run (warmup, then cosine), not one squeezed into 4 steps: 3x the rate.
    assert len(rates["lr=1e-3"]) == 4 and rates["lr=1e-3"][-1] < 1e-3
    assert rates["lr=3e-3,lora.rank=4"] == pytest.approx([3 * rate for rate in rates["lr=1e-3"]])
    assert "lora     rank 4" in (tmp_path / "lr=3e-3,lora.rank=4" / "train.log").read_text()
    rows = (tmp_path / TABLE_FILE).read_text().splitlines()
    assert len(rows) == 4 and rows[2].startswith("| lr=1e-3 | 4 | ")


def test_the_grid_runs_every_combination_then_the_single_runs():
    found = settings(["train.lr=1e-3,3e-3", "train.lora.rank=0,4"], ["train.lr=1e-2 model.remat=full"])
    assert [s.name for s in found] == ["lr=1e-3,lora.rank=0", "lr=1e-3,lora.rank=4", "lr=3e-3,lora.rank=0",
                                       "lr=3e-3,lora.rank=4", "lr=1e-2,model.remat=full"]


@pytest.mark.parametrize("grid, runs, message", [
    (["train.lr"], [], "--grid 'train.lr': expected KEY=VALUE1,VALUE2"),
    ([], ["train.lr"], "--run 'train.lr': expected KEY=VALUE"),
    ([], [], "nothing to sweep"),
])
def test_malformed_settings_are_refused(grid, runs, message):
    with pytest.raises(UserError, match=message):
        settings(grid, runs)


def test_an_unknown_field_stops_the_sweep_before_any_run(tmp_path):
    with pytest.raises(UserError, match="train.lrr: no such field"):
        sweep(str(TINY), tmp_path, [], ["train.lr=1e-3"], ["train.lrr=1"], say=lambda line: None)
    assert not list(tmp_path.iterdir())
