"""Relation classification scores in MNRE's convention: each instance names one entity pair and its
relation (possibly `None`); a prediction is the relation of the first predicted triple on that pair
(`None` when no triple joins them, or the output does not parse). Micro precision is the correct
non-None predictions over all non-None predictions, recall the same over the non-None gold relations,
F1 their harmonic mean; `None` is never a positive. Computed from the confusion matrix."""

import dataclasses
from collections.abc import Sequence

import numpy as np

from oie_jax.data import format as fmt
from oie_jax.data.format import Record
from oie_jax.data.sources.mnre import NO_RELATION


@dataclasses.dataclass(frozen=True)
class RelationScores:
    labels: tuple[str, ...]  # the confusion matrix's order; NO_RELATION first
    confusion: np.ndarray  # (gold, predicted) counts

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion) - self.confusion[0, 0])

    @property
    def predicted(self) -> int:
        return int(self.confusion[:, 1:].sum())

    @property
    def gold(self) -> int:
        return int(self.confusion[1:, :].sum())

    def metrics(self) -> dict[str, float]:
        p = self.correct / self.predicted if self.predicted else 0.0
        r = self.correct / self.gold if self.gold else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return {"re/p": p, "re/r": r, "re/f1": f1,
                "re/accuracy": float(np.trace(self.confusion) / max(self.confusion.sum(), 1))}


def predicted_relation(output: str, head: str, tail: str) -> str:
    parsed = fmt.parse(output, "Relation Extraction")
    return next((relation for h, relation, t in parsed.items if (h, t) == (head, tail)), NO_RELATION)


def relation_scores(golds: Sequence[Record], outputs: Sequence[str]) -> RelationScores:
    """Scores of one output per gold instance (a record with one triple: head, relation, tail)."""
    if len(golds) != len(outputs):
        raise ValueError(f"{len(golds)} gold instances, {len(outputs)} outputs")
    pairs = []
    for gold, output in zip(golds, outputs):
        (head, relation, tail), = gold.items
        pairs.append((relation, predicted_relation(output, head, tail)))
    labels = (NO_RELATION, *sorted({label for pair in pairs for label in pair} - {NO_RELATION}))
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(confusion, ([index[g] for g, _ in pairs], [index[p] for _, p in pairs]), 1)
    return RelationScores(labels, confusion)
