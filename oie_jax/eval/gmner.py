"""GMNER, MNER and EEG precision, recall and F1 (Yu et al., ACL 2023), counted by one jitted function.

An entity is (text, type, region); its region is a box, or "not in the image" (None).

    MNER   (text, type) right
    EEG    (text, region) right
    GMNER  (text, type, region) right

A predicted region is right when it is a box whose IoU with any gold box of the entity exceeds 0.5,
or when both prediction and gold say "not in the image". Texts are compared after `normalize`, types
after `normalize` and ignoring case (`type_key`: other systems write PER, per or Per). Each
gold entity is matched at most once, so an entity predicted twice counts once (the second copy is a
false positive). Gold boxes belong to an entity's surface string (the Twitter-GMNER box files name
them so), so two mentions of one text share their boxes. Boxes are (x1, y1, x2, y2) in pixels of
the original image; IoU is computed on continuous coordinates, and a box without area overlaps nothing.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oie_jax.data.entities import Entity
from oie_jax.data.format import normalize
from oie_jax.eval.encode import power_of_two
from oie_jax.eval.metrics import COUNTS, STATS, matched_items, precision_recall_f1
from oie_jax.models.boxes import iou

GMNER_METRICS = ("gmner", "mner", "eeg")
IOU_THRESHOLD = 0.5
NONE = -1  # padding id


def type_key(name: str) -> str:
    """How entity types compare: after `normalize`, ignoring case."""
    return normalize(name).casefold()


@dataclasses.dataclass(frozen=True)
class Arrays:
    """A set as padded arrays: N examples, P predicted and G gold entities each, B boxes per gold entity."""

    pred_text: np.ndarray  # (N, P) int: id of the normalised text, NONE = padding
    pred_typed: np.ndarray  # (N, P) int: id of (text, type)
    pred_box: np.ndarray  # (N, P, 4) float
    pred_in_image: np.ndarray  # (N, P) bool
    gold_text: np.ndarray  # (N, G)
    gold_typed: np.ndarray  # (N, G)
    gold_boxes: np.ndarray  # (N, G, B, 4)
    gold_box_mask: np.ndarray  # (N, G, B) bool


jax.tree_util.register_dataclass(Arrays, data_fields=[f.name for f in dataclasses.fields(Arrays)], meta_fields=[])


def encode(golds: Sequence[Sequence[Entity]], preds: Sequence[Sequence[Entity]]) -> Arrays:
    """Ids for texts and (text, type) pairs shared by gold and predictions; padded to powers of two."""
    ids: dict = {}

    def key(value) -> int:
        return ids.setdefault(value, len(ids))

    n = power_of_two(len(golds), 8)
    p = power_of_two(max((len(x) for x in preds), default=1), 1)
    g = power_of_two(max((len(x) for x in golds), default=1), 1)
    b = power_of_two(max((len(e.boxes) for x in golds for e in x), default=1), 1)
    arrays = Arrays(
        pred_text=np.full((n, p), NONE, np.int32), pred_typed=np.full((n, p), NONE, np.int32),
        pred_box=np.zeros((n, p, 4), np.float32), pred_in_image=np.zeros((n, p), bool),
        gold_text=np.full((n, g), NONE, np.int32), gold_typed=np.full((n, g), NONE, np.int32),
        gold_boxes=np.zeros((n, g, b, 4), np.float32), gold_box_mask=np.zeros((n, g, b), bool))
    for row, (gold, pred) in enumerate(zip(golds, preds)):
        for column, entity in enumerate(pred):
            text = normalize(entity.text)
            arrays.pred_text[row, column] = key(("text", text))
            arrays.pred_typed[row, column] = key(("typed", text, type_key(entity.type)))
            if entity.boxes:
                arrays.pred_box[row, column] = entity.boxes[0]
                arrays.pred_in_image[row, column] = True
        for column, entity in enumerate(gold):
            text = normalize(entity.text)
            arrays.gold_text[row, column] = key(("text", text))
            arrays.gold_typed[row, column] = key(("typed", text, type_key(entity.type)))
            for k, box in enumerate(entity.boxes):
                arrays.gold_boxes[row, column, k] = box
                arrays.gold_box_mask[row, column, k] = True
    return arrays


def matched_with_region(pred_key, gold_key, region_right) -> jax.Array:
    """Per row, how many predictions are matched to a gold entity of their key whose region they got
    right, each gold entity at most once: the k-th right prediction of a key (in row order) is matched
    when the gold holds more than k entities of that key."""
    width = pred_key.shape[1]
    earlier = jnp.tril(jnp.ones((width, width), bool), -1)
    same = (pred_key[:, :, None] == pred_key[:, None, :]) & region_right[:, None, :]
    right_before = (same & earlier).sum(-1)
    in_gold = ((pred_key[:, :, None] == gold_key[:, None, :]) & (gold_key[:, None, :] != NONE)).sum(-1)
    return (region_right & (right_before < in_gold) & (pred_key != NONE)).sum(-1)


@jax.jit
def count(arrays: Arrays) -> jax.Array:
    """(3, 3) counts [metric: gmner, mner, eeg][tp, pred, gold] over the set."""
    overlaps = iou(arrays.pred_box[:, :, None, None, :], arrays.gold_boxes[:, None, :, :, :])  # (N, P, G, B)
    box_right = ((overlaps > IOU_THRESHOLD) & arrays.gold_box_mask[:, None]).any(-1)  # (N, P, G)
    gold_in_image = arrays.gold_box_mask.any(-1)  # (N, G)
    region_right = jnp.where(arrays.pred_in_image[:, :, None], box_right, ~gold_in_image[:, None, :])

    def right_for(pred_key, gold_key):  # the region is right for some gold entity of the prediction's key
        return ((pred_key[:, :, None] == gold_key[:, None, :]) & region_right).any(-1)

    def matched(pred_key, gold_key):
        return matched_with_region(pred_key, gold_key, right_for(pred_key, gold_key)).sum()

    predicted = (arrays.pred_text != NONE).sum()
    gold = (arrays.gold_text != NONE).sum()
    tp = jnp.stack([matched(arrays.pred_typed, arrays.gold_typed),
                    matched_items(arrays.pred_typed, arrays.gold_typed).sum(),
                    matched(arrays.pred_text, arrays.gold_text)])
    return jnp.stack([tp, jnp.full(3, predicted), jnp.full(3, gold)], -1).astype(jnp.int32)


def metric_names() -> list[str]:
    return [f"{metric}/{stat}" for metric in GMNER_METRICS for stat in STATS]


@dataclasses.dataclass(frozen=True)
class GroundingScores:
    counts: np.ndarray  # (3, 3): [gmner, mner, eeg][tp, pred, gold]
    prf: np.ndarray  # (3, 3): [gmner, mner, eeg][P, R, F1]

    def metrics(self) -> dict[str, float]:
        """`gmner/f1`, `mner/p`, `eeg/r`, ..."""
        return dict(zip(metric_names(), map(float, self.prf.reshape(-1))))

    def counts_by_name(self) -> dict[str, int]:
        return {f"{metric}/{name}": int(self.counts[m, c]) for m, metric in enumerate(GMNER_METRICS)
                for c, name in enumerate(COUNTS)}


def score(golds: Sequence[Sequence[Entity]], preds: Sequence[Sequence[Entity]]) -> GroundingScores:
    """Scores of `preds[i]` against `golds[i]` (lists of entities per example)."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold examples but {len(preds)} predictions")
    counts = np.asarray(count(encode(golds, preds)))
    return GroundingScores(counts, np.asarray(precision_recall_f1(jnp.asarray(counts))))


def region_slice(pred: Entity, gold: Sequence[Entity]) -> bool:
    """Whether a prediction counts among the groundable entities: as the gold entity of its tweet with its
    text is, else as it claims itself (a box: groundable)."""
    text = normalize(pred.text)
    return next((g.in_image for g in gold if normalize(g.text) == text), pred.in_image)


def breakdown(golds: Sequence[Sequence[Entity]], preds: Sequence[Sequence[Entity]]) -> dict[str, GroundingScores]:
    """Scores of slices of the set, as the GMNER papers report them: `type/T` for each gold type T (gold
    and predicted entities of that type, compared by `type_key`; T spelled as the gold first does), then
    `groundable` and `ungroundable` (gold entities in the image or not; predictions by `region_slice`)."""
    spellings: dict[str, str] = {}
    for gold in golds:
        for entity in gold:
            spellings.setdefault(type_key(entity.type), entity.type)
    slices = {}
    for key, spelling in sorted(spellings.items(), key=lambda item: item[1]):
        slices[f"type/{spelling}"] = score([[e for e in gold if type_key(e.type) == key] for gold in golds],
                                           [[e for e in pred if type_key(e.type) == key] for pred in preds])
    for name, in_image in (("groundable", True), ("ungroundable", False)):
        slices[name] = score([[e for e in gold if e.in_image == in_image] for gold in golds],
                             [[e for e in pred if region_slice(e, gold) == in_image]
                              for gold, pred in zip(golds, preds)])
    return slices
