"""A dev set carved out of the training records: the MMM release has train and test files only, and
model selection on test data would make every reported test number optimistic.

`data.dev = "holdout:N"` holds out N records of each (subset, language) group, chosen by a seeded
permutation of the group, so the split is the same on every process and every run with the seed.
A group never gives more than half of its records.
"""

import collections
import hashlib

import numpy as np

from oie_jax.data.format import Record

PREFIX = "holdout:"


def parse_spec(spec: str) -> int | None:
    """N of a "holdout:N" dev spec; None for any other spec."""
    if not spec.startswith(PREFIX):
        return None
    count = spec.removeprefix(PREFIX)
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"dev spec {spec!r}: expected {PREFIX}N with N >= 1 records per (subset, language) group")
    return int(count)


def group_seed(seed: int, group: tuple[str, str]) -> list[int]:
    # A digest, not hash(): Python salts string hashes per process.
    return [seed, int.from_bytes(hashlib.sha256("\x1f".join(group).encode()).digest()[:8], "little")]


def split(records: list[Record], per_group: int, seed: int) -> tuple[list[Record], list[Record], dict]:
    """(training records, held-out dev records, {group: held-out count}); both lists keep the input order."""
    members = collections.defaultdict(list)
    for index, record in enumerate(records):
        members[record.subset, record.language].append(index)
    held, counts = set(), {}
    for group, indices in sorted(members.items()):
        take = min(per_group, len(indices) // 2)
        chosen = np.random.default_rng(group_seed(seed, group)).permutation(indices)[:take]
        held.update(int(i) for i in chosen)
        counts[group] = take
    train = [r for i, r in enumerate(records) if i not in held]
    dev = [r for i, r in enumerate(records) if i in held]
    return train, dev, counts
