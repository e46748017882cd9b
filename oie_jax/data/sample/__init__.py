"""The embedded sample corpus: 10 records for each of the 21 subset x language cells of MMM,
written for this project, split 6/2/2 per cell into train.jsonl, dev.jsonl and test.jsonl."""

from pathlib import Path

from oie_jax.data.format import Record
from oie_jax.data.sources import Checked, records

DIRECTORY = Path(__file__).parent
SPLITS = ("train", "dev", "test")


def load_sample(split: str | None = None) -> list[Record]:
    """Sample records of one split (all splits when None), in file order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    loaded = []
    for name in [split] if split else SPLITS:
        for value in records.read(DIRECTORY / f"{name}.jsonl"):
            if not isinstance(value, Checked) or value.problems:
                raise ValueError(f"the embedded sample corpus is damaged: {value}")
            loaded.append(value.record)
    return loaded
