"""Plain-Python reference of the metrics in docs/metrics.md: Counters of normalized strings, no arrays.

`prepare` parses and normalizes (the part both implementations share through the format module);
`count` and `summarize` are the counting that `oie_jax.eval.metrics.count_and_score` does jitted.
benchmarks/bench_metrics.py times `count` + `summarize` against it.
"""

import collections

from oie_jax.data.format import normalize, parse

METRICS = ("tl", "wl", "all")


def prepare(golds, outputs) -> list[dict]:
    examples = []
    for gold, output in zip(golds, outputs):
        parsed = parse(output, gold.task)
        examples.append({
            "group": (gold.subset, gold.language),
            "gold_label": normalize(gold.label),
            "pred_label": normalize(parsed.label),
            "well_formed": parsed.well_formed,
            "gold_items": [tuple(normalize(v) for v in item) for item in gold.items],
            "pred_items": [tuple(normalize(v) for v in item) for item in parsed.items],
        })
    return examples


def count(examples: list[dict]) -> dict:
    """{group: {metric: [tp, pred, gold]}}."""
    groups = collections.defaultdict(lambda: {m: [0, 0, 0] for m in METRICS})
    for ex in examples:
        counts = groups[ex["group"]]
        gold_items, pred_items = collections.Counter(ex["gold_items"]), collections.Counter(ex["pred_items"])
        matched = sum((gold_items & pred_items).values())
        add(counts["wl"], matched, len(ex["pred_items"]), len(ex["gold_items"]))
        if not ex["gold_label"]:
            continue  # no gold text-level label: WL only
        label_right = ex["pred_label"] == ex["gold_label"]
        add(counts["tl"], label_right, bool(ex["pred_label"]), 1)
        correct = ex["well_formed"] and label_right and gold_items == pred_items
        add(counts["all"], correct, ex["well_formed"], 1)
    return dict(groups)


def add(counts: list[int], tp, pred, gold):
    counts[0] += int(tp)
    counts[1] += int(pred)
    counts[2] += int(gold)


def prf(tp: int, pred: int, gold: int) -> tuple[float, float, float]:
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def summarize(groups: dict) -> dict[str, float]:
    """Metric names as `Scores.metrics()` gives them -> value."""
    values = {}

    def put(scope, metric, triple):
        for stat, value in zip(("p", "r", "f1"), triple):
            values[f"{scope}/{metric}/{stat}"] = value

    languages = sorted({language for _, language in groups})
    for metric in METRICS:
        for (subset, language), counts in groups.items():
            put(f"{subset or '-'}/{language or '-'}", metric, prf(*counts[metric]))
        for scope, members in [("", list(groups))] + [(f"{lang or '-'}/", [g for g in groups if g[1] == lang])
                                                     for lang in languages]:
            total = [sum(groups[g][metric][i] for g in members) for i in range(3)]
            put(f"{scope}micro", metric, prf(*total))
            defined = [prf(*groups[g][metric]) for g in members if groups[g][metric][2] > 0]
            mean = [sum(t[i] for t in defined) / len(defined) if defined else 0.0 for i in range(3)]
            put(f"{scope}macro", metric, mean)
    return values


def reference_metrics(golds, outputs) -> tuple[dict, dict[str, float]]:
    groups = count(prepare(golds, outputs))
    return groups, summarize(groups)
