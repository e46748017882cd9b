"""The embedded sample corpus: 10 records for each of the 21 subset x language cells of MMM,
written for this project, split 6/2/2 into train/dev/test per cell."""

import json
from pathlib import Path

from oie_jax.data.format import Record

DIRECTORY = Path(__file__).parent
SPLITS = ("train", "dev", "test")


def load_sample(split: str | None = None) -> list[Record]:
    """Sample records of one split (all splits when None), in file order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    records = []
    for path in sorted(DIRECTORY.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            value = json.loads(line)
            if split is None or value["split"] == split:
                records.append(Record.from_json(value))
    return records
