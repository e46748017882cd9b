"""TL, WL and ALL precision, recall and F1 (definitions in docs/metrics.md), counted by one jitted function.

`score(golds, outputs)` parses and encodes on the host (`encode.py`), then `count_and_score` does all
the counting, per-group P/R/F1, micro and macro averages in one `jax.jit` program over the whole set.
Every per-example computation is row-wise, so the example axis can be sharded across devices
(`sharding=`); the group sums become a cross-device reduction.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oie_jax.data.format import Record
from oie_jax.eval import DEFAULT_METRIC
from oie_jax.eval.encode import NONE, Encoded, Groups, encode, pad_rows, power_of_two

METRICS = ("tl", "wl", "all")
STATS = ("p", "r", "f1")
COUNTS = ("tp", "pred", "gold")
TALLIES = ("examples", "labelled", "well_formed")  # per group: examples, with a gold text label, well formed
MIN_ROWS = 64


def matched_items(pred: jax.Array, gold: jax.Array) -> jax.Array:
    """Per row, the size of the multiset intersection of the item ids (NONE is padding): the sum over
    distinct items of min(count in pred, count in gold). Each predicted item is matched when fewer
    copies of it come before it in the row than the gold holds, which adds up to exactly that minimum."""
    width = pred.shape[1]
    earlier = jnp.tril(jnp.ones((width, width), bool), -1)  # [j, i]: i comes before j
    copies_before = ((pred[:, :, None] == pred[:, None, :]) & earlier).sum(-1)
    in_gold = ((pred[:, :, None] == gold[:, None, :]) & (gold[:, None, :] != NONE)).sum(-1)
    return ((copies_before < in_gold) & (pred != NONE)).sum(-1)


def precision_recall_f1(counts: jax.Array) -> jax.Array:
    """(..., 3) counts [tp, pred, gold] -> (..., 3) [P, R, F1]; a ratio with nothing below it is 0."""
    tp, pred, gold = (counts[..., i].astype(jnp.float32) for i in range(3))
    precision = jnp.where(pred > 0, tp / jnp.maximum(pred, 1), 0.0)
    recall = jnp.where(gold > 0, tp / jnp.maximum(gold, 1), 0.0)
    total = precision + recall
    f1 = jnp.where(total > 0, 2 * precision * recall / jnp.where(total > 0, total, 1), 0.0)
    return jnp.stack([precision, recall, f1], -1)


def per_example_counts(enc: Encoded) -> tuple[jax.Array, jax.Array]:
    """(N, 3, 3) counts [metric][tp, pred, gold] and (N, 3) tallies of each example."""
    labelled = enc.gold_label != NONE  # examples without a gold text label count in WL only
    tl_pred = labelled & (enc.pred_label != NONE)
    tl_tp = tl_pred & (enc.pred_label == enc.gold_label)
    wl_tp = matched_items(enc.pred_items, enc.gold_items)
    wl_pred = (enc.pred_items != NONE).sum(-1)
    wl_gold = (enc.gold_items != NONE).sum(-1)
    all_pred = labelled & enc.well_formed
    all_tp = all_pred & tl_tp & (wl_tp == wl_pred) & (wl_tp == wl_gold)
    counts = jnp.stack([
        jnp.stack([tl_tp, tl_pred, labelled], -1).astype(jnp.int32),
        jnp.stack([wl_tp, wl_pred, wl_gold], -1).astype(jnp.int32),
        jnp.stack([all_tp, all_pred, labelled], -1).astype(jnp.int32),
    ], 1)
    tallies = jnp.stack([jnp.ones_like(labelled), labelled, enc.well_formed], -1).astype(jnp.int32)
    return counts, tallies


def macro(prf: jax.Array, counts: jax.Array, members: jax.Array) -> jax.Array:
    """Means of per-group P, R, F1 over the member groups whose gold holds something for the metric.
    prf, counts: (G, 3, 3); members: (G, L) -> (L, 3, 3)."""
    defined = (counts[..., 2] > 0).astype(jnp.float32)  # (G, 3)
    weights = members[:, :, None] * defined[:, None, :]  # (G, L, 3)
    total = jnp.einsum("glm,gms->lms", weights, prf)
    return total / jnp.maximum(weights.sum(0), 1.0)[..., None]


@functools.partial(jax.jit, static_argnames=("num_groups", "num_languages"))
def count_and_score(enc: Encoded, group_language: jax.Array, *, num_groups: int, num_languages: int) -> dict:
    """Counts, P/R/F1 per group, micro and macro over all groups and per language, for a whole set."""
    counts, tallies = per_example_counts(enc)
    group_counts = jax.ops.segment_sum(counts, enc.group, num_segments=num_groups)
    group_tallies = jax.ops.segment_sum(tallies, enc.group, num_segments=num_groups)
    group_prf = precision_recall_f1(group_counts)
    members = jax.nn.one_hot(group_language, num_languages, dtype=jnp.float32)  # (G, L)
    language_counts = jnp.einsum("gl,gmc->lmc", members.astype(jnp.int32), group_counts)
    return {
        "counts": group_counts,
        "tallies": group_tallies,
        "group": group_prf,
        "micro": precision_recall_f1(group_counts.sum(0)),
        "macro": macro(group_prf, group_counts, jnp.ones((num_groups, 1)))[0],
        "language_micro": precision_recall_f1(language_counts),
        "language_macro": macro(group_prf, group_counts, members),
    }


@dataclasses.dataclass(frozen=True)
class Scores:
    """The metrics of one set. Arrays are indexed [group or language][metric: tl, wl, all][P, R, F1 or
    tp, pred, gold]; `metric(name)` reads one value by name (`metrics()` lists them all)."""

    groups: Groups
    counts: np.ndarray  # (G, 3, 3) int
    tallies: np.ndarray  # (G, 3) int: examples, labelled, well formed
    group: np.ndarray  # (G, 3, 3)
    micro: np.ndarray  # (3, 3)
    macro: np.ndarray  # (3, 3)
    language_micro: np.ndarray  # (L, 3, 3)
    language_macro: np.ndarray  # (L, 3, 3)
    notes: tuple[str, ...] = ()  # what the report must say besides the numbers (missing predictions, ...)
    generation: object = None  # GenerationStats when the outputs were generated by `evaluate`

    @property
    def examples(self) -> int:
        return int(self.tallies[:, 0].sum())

    @property
    def unlabelled(self) -> int:
        """Examples whose gold has no text-level label: they count in WL only."""
        return int((self.tallies[:, 0] - self.tallies[:, 1]).sum())

    def metrics(self) -> dict[str, float]:
        """Every value by name: `micro/wl/f1`, `macro/all/p`, `en/macro/tl/r`, `SCNM/en/all/f1`, ..."""
        tables = [self.micro, self.macro]
        tables += [table for i in range(len(self.groups.languages))
                   for table in (self.language_micro[i], self.language_macro[i])]
        tables += list(self.group[: len(self.groups.keys)])
        return {f"{scope}/{metric}/{stat}": float(table[m, s]) for scope, table in zip(scopes(self.groups), tables)
                for m, metric in enumerate(METRICS) for s, stat in enumerate(STATS)}

    def metric(self, name: str = DEFAULT_METRIC) -> float:
        values = self.metrics()
        if name not in values:
            raise KeyError(f"no metric {name!r}; names look like 'macro/all/f1', 'micro/wl/p', 'en/macro/tl/r', "
                           f"'SCNM/en/all/f1' (scope/metric/stat with metric in {METRICS} and stat in {STATS})")
        return values[name]


def scopes(groups: Groups) -> list[str]:
    """The scopes of a set's metric names, in the order `Scores.metrics` lists them."""
    return (["micro", "macro"] + [f"{language or '-'}/{kind}" for language in groups.languages
                                  for kind in ("micro", "macro")]
            + [f"{subset or '-'}/{language or '-'}" for subset, language in groups.keys])


def metric_names(records: Sequence[Record]) -> list[str]:
    """The names `Scores.metrics()` will have for these gold records, before any output exists."""
    return [f"{scope}/{metric}/{stat}" for scope in scopes(Groups.of(records)) for metric in METRICS
            for stat in STATS]


def score(golds: Sequence[Record], outputs: Sequence[str], *, notes: Sequence[str] = (),
          sharding: jax.sharding.NamedSharding | None = None) -> Scores:
    """Scores of `outputs[i]` against `golds[i]`. With `sharding` (a NamedSharding whose spec names
    the mesh axes of the example axis), the example arrays are split across those devices."""
    encoded, groups = encode(golds, outputs)
    return score_encoded(encoded, groups, notes=notes, sharding=sharding)


def score_encoded(encoded: Encoded, groups: Groups, *, notes: Sequence[str] = (),
                  sharding: jax.sharding.NamedSharding | None = None) -> Scores:
    rows = padded_rows(len(encoded.group), sharding)
    encoded = pad_rows(encoded, rows, groups.padding_group)
    if sharding is not None:
        encoded = jax.device_put(encoded, sharding)
    out = count_and_score(encoded, groups.language_index(), num_groups=groups.padded,
                          num_languages=groups.padded_languages)
    out = jax.device_get(out)
    real, languages = len(groups.keys), len(groups.languages)
    return Scores(groups, out["counts"][:real], out["tallies"][:real], out["group"][:real], out["micro"],
                  out["macro"], out["language_micro"][:languages], out["language_macro"][:languages],
                  notes=tuple(notes) + unlabelled_note(out["tallies"][:real]))


def padded_rows(n: int, sharding: jax.sharding.NamedSharding | None) -> int:
    """A power of two (so that sets of similar size share a compiled program), divisible by the
    number of shards of the example axis."""
    shards = 1
    if sharding is not None and len(sharding.spec) and sharding.spec[0] is not None:
        axes = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
        shards = int(np.prod([sharding.mesh.shape[a] for a in axes]))
    rows = power_of_two(n, MIN_ROWS)
    return -(-rows // shards) * shards


def unlabelled_note(tallies: np.ndarray) -> tuple[str, ...]:
    unlabelled = int((tallies[:, 0] - tallies[:, 1]).sum())
    if not unlabelled:
        return ()
    return (f"{unlabelled:,} of {int(tallies[:, 0].sum()):,} gold examples have no text-level label (their source "
            "has none): they count in WL only, not in TL or ALL.",)
