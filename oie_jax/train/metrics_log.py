"""Training metrics into WORKDIR/metrics.jsonl and TensorBoard event files (WORKDIR/tensorboard)."""

import json
import math
import shutil
import tempfile

from etils import epath

from oie_jax.files import is_url

FILE = "metrics.jsonl"


class MetricsLog:
    """One JSON object per line, {"step": n, name: value, ...}. On resume from step s, lines of later
    steps (written by the run that was cut off) are dropped, so the file reads like one uninterrupted
    run. Only the writing process (process 0) opens files.

    Every file goes through `etils.epath`, so the workdir may be a bucket (gs://). A bucket cannot
    append: there, metrics.jsonl is rewritten and the TensorBoard event files (which TensorFlow
    writes to a local directory) are copied over at each `flush()`; the loop flushes when it saves."""

    def __init__(self, workdir, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = epath.Path(workdir) / FILE
        self.events = epath.Path(workdir) / "tensorboard"
        self.remote = is_url(self.path)
        self.lines: list[str] = []
        self.unwritten = 0
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            self.lines = [line for line in lines if json.loads(line)["step"] <= resume_step]
        self.path.write_text("".join(line + "\n" for line in self.lines))
        import tensorflow as tf  # the input pipeline imports it anyway

        self.local_events = epath.Path(tempfile.mkdtemp(prefix="oie-jax-tensorboard-")) if self.remote else self.events
        self.writer = tf.summary.create_file_writer(str(self.local_events))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        import tensorflow as tf

        values = {name: float(value) for name, value in metrics.items()}
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self.lines.append(json.dumps({"step": step, **{k: v if math.isfinite(v) else str(v)
                                                       for k, v in values.items()}}))
        self.unwritten += 1
        if not self.remote:
            self._write_lines()

    def _write_lines(self) -> None:
        if self.remote:
            self.path.write_text("".join(line + "\n" for line in self.lines))
        elif self.unwritten:
            with self.path.open("a") as f:
                f.write("".join(line + "\n" for line in self.lines[-self.unwritten:]))
        self.unwritten = 0

    def flush(self) -> None:
        if not self.enabled:
            return
        self.writer.flush()
        if self.remote:
            self._write_lines()
            self.events.mkdir(parents=True, exist_ok=True)
            for path in self.local_events.iterdir():
                (self.events / path.name).write_bytes(path.read_bytes())

    def close(self) -> None:
        if self.writer is not None:
            self.flush()
            self.writer.close()
            if self.remote:  # the local stand-in for the bucket's event files, copied over by flush()
                shutil.rmtree(self.local_events, ignore_errors=True)


def read_metrics(workdir) -> list[dict]:
    path = epath.Path(workdir) / FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
