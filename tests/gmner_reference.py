"""Plain-Python reference of the GMNER, MNER and EEG counts (oie_jax/eval/gmner.py): for each example a
maximum matching between predicted and gold entities by augmenting paths, where a pair may match when
the metric's parts agree. No arrays, no assumption about which gold boxes a text has."""

from oie_jax.data.format import normalize


def overlap_ratio(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - width * height
    return width * height / union if union > 0 else 0.0


def region_right(pred, gold) -> bool:
    if not pred.boxes:
        return not gold.boxes
    return any(overlap_ratio(pred.boxes[0], box) > 0.5 for box in gold.boxes)


def agrees(metric: str, pred, gold) -> bool:
    text = normalize(pred.text) == normalize(gold.text)
    typed = text and normalize(pred.type).casefold() == normalize(gold.type).casefold()
    return {"mner": typed, "eeg": text and region_right(pred, gold),
            "gmner": typed and region_right(pred, gold)}[metric]


def maximum_matching(preds, golds, metric: str) -> int:
    owner = {}  # gold index -> pred index

    def augment(p, seen) -> bool:
        for g, gold in enumerate(golds):
            if g in seen or not agrees(metric, preds[p], gold):
                continue
            seen.add(g)
            if g not in owner or augment(owner[g], seen):
                owner[g] = p
                return True
        return False

    return sum(augment(p, set()) for p in range(len(preds)))


def reference_counts(golds, preds) -> dict[str, list[int]]:
    """{metric: [tp, pred, gold]} over the set."""
    counts = {metric: [0, 0, 0] for metric in ("gmner", "mner", "eeg")}
    for gold, pred in zip(golds, preds):
        for metric, row in counts.items():
            row[0] += maximum_matching(pred, gold, metric)
            row[1] += len(pred)
            row[2] += len(gold)
    return counts
