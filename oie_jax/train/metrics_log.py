"""Training metrics into WORKDIR/metrics.jsonl and TensorBoard event files (WORKDIR/tensorboard)."""

import json
import math
from pathlib import Path

FILE = "metrics.jsonl"


class MetricsLog:
    """One JSON object per line, {"step": n, name: value, ...}. On resume from step s, lines of later
    steps (written by the run that was cut off) are dropped, so the file reads like one uninterrupted
    run. Only the writing process (process 0) opens files."""

    def __init__(self, workdir, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / FILE
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        import tensorflow as tf  # the input pipeline imports it anyway

        self.writer = tf.summary.create_file_writer(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        values = {name: float(value) for name, value in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: v if math.isfinite(v) else str(v) for k, v in values.items()}})
                    + "\n")
        import tensorflow as tf

        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def read_metrics(workdir) -> list[dict]:
    path = Path(workdir) / FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
