"""Short runs side by side: one `oie-jax train` per setting (a grid of values, and single runs), each in
its own process and workdir under the sweep's, one after the other; then a table of where each ended
(dev loss, the config's best metric, wall time). With `train.steps_limit` each run is the start of its
full run, and the same command again resumes unfinished runs and re-reads finished ones."""

import dataclasses
import itertools
import os
import subprocess
import sys
import time

from etils import epath

from oie_jax.errors import UserError
from oie_jax.train.config_file import apply_overrides, load_config_file
from oie_jax.train.metrics_log import read_metrics

TABLE_FILE = "sweep.md"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One run of the sweep: its overrides, and the workdir name they make."""

    overrides: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return ",".join(f"{key.removeprefix('train.')}={value}" for key, value in self.overrides) or "base"


def settings(grid: list[str], runs: list[str]) -> list[Setting]:
    """The grid's combinations (`KEY=V1,V2,...` each), then each single run (`KEY=V KEY=V ...`)."""
    axes = []
    for spec in grid:
        key, has_value, values = spec.partition("=")
        if not has_value or not values:
            raise UserError(f"--grid {spec!r}: expected KEY=VALUE1,VALUE2,...")
        axes.append([(key, value) for value in values.split(",")])
    found = [Setting(tuple(combination)) for combination in itertools.product(*axes)] if axes else []
    for spec in runs:
        pairs = [pair.partition("=") for pair in spec.split()]
        if not pairs or any(not has_value for _, has_value, _ in pairs):
            raise UserError(f"--run {spec!r}: expected KEY=VALUE [KEY=VALUE ...]")
        found.append(Setting(tuple((key, value) for key, _, value in pairs)))
    if not found:
        raise UserError("nothing to sweep: give --grid KEY=V1,V2,... and/or --run 'KEY=V ...'")
    return found


@dataclasses.dataclass(frozen=True)
class Result:
    setting: Setting
    step: int
    dev_loss: float | None
    metric: float | None
    best: float | None
    seconds: float
    status: int


def last(metrics: list[dict], name: str) -> float | None:
    values = [m[name] for m in metrics if name in m]
    return values[-1] if values else None


def run_one(config_file: str, overrides, setting: Setting, workdir: epath.Path, metric: str, mode: str) -> Result:
    """`oie-jax train` of one setting in a fresh process (each run's memory is given back), its output
    in WORKDIR/train.log; its result from its metrics."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "oie_jax.cli", "train", "--config", config_file, "--workdir", str(workdir),
               *(f"--config.{key}={value}" for key, value in (*overrides, *setting.overrides))]
    began = time.perf_counter()
    with open(workdir / "train.log", "a") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ).returncode
    seconds = time.perf_counter() - began
    metrics = read_metrics(workdir)
    values = [m[metric] for m in metrics if metric in m]
    best = (max if mode == "max" else min)(values) if values else None
    steps = [m["step"] for m in metrics if "loss" in m]
    return Result(setting, max(steps, default=0), last(metrics, "dev_loss"), last(metrics, metric), best, seconds,
                  status)


def table(results: list[Result], metric: str) -> str:
    scale, digits = (100.0, 1) if "f1" in metric else (1.0, 4)  # F1 as a percentage, as the reports show it

    def number(value, scale=1.0, digits=3):
        return "" if value is None else f"{value * scale:.{digits}f}"

    lines = [f"| run | steps | dev loss | {metric} (last) | {metric} (best) | wall | exit |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        minutes, seconds = divmod(round(r.seconds), 60)
        lines.append(f"| {r.setting.name} | {r.step} | {number(r.dev_loss)} | {number(r.metric, scale, digits)} | "
                     f"{number(r.best, scale, digits)} | {minutes} min {seconds} s | {r.status} |")
    return "\n".join(lines)


def sweep(config_file: str, workdir, overrides, grid: list[str], runs: list[str], say=print) -> list[Result]:
    """Every setting's run in turn (WORKDIR/NAME), the table after each (WORKDIR/sweep.md), printed at the end."""
    workdir = epath.Path(workdir)
    all_settings = settings(grid, runs)
    config = load_config_file(config_file)
    for setting in all_settings:  # every override is checked before the first run starts
        apply_overrides(load_config_file(config_file), [*overrides, *setting.overrides])
    config = apply_overrides(config, list(overrides))
    metric = config.checkpoint.best_metric or "dev_loss"
    results = []
    for i, setting in enumerate(all_settings, 1):
        say(f"sweep run {i} of {len(all_settings)}: {setting.name} (log: {workdir / setting.name / 'train.log'})")
        result = run_one(config_file, overrides, setting, workdir / setting.name, metric,
                         config.checkpoint.best_mode)
        results.append(result)
        (workdir / TABLE_FILE).write_text(table(results, metric) + "\n")
        if result.status:
            say(f"  it failed (exit status {result.status}); the sweep goes on (see its log)")
    say(table(results, metric))
    return results
