"""Error analysis of predicted items against gold: precision, recall and F1 per item label, the
confusion of labels on spans both sides hold, and the kinds of error.

Items are compared as the metrics compare them (fields after `normalize`, multisets). An item's
label is its first field (its relation for a triple); its span is the rest (head and tail for a
triple). Once the exact matches are taken out, what is left is explained, per example, in this
order: a predicted and a gold item with the same span and different labels are a *wrong label*; a
pair with the same label whose spans overlap in the text without being equal is a *boundary error*;
a gold item left over is a *missed entity*, a predicted one a *spurious entity*. Each item explains
at most one error."""

import collections
import dataclasses
from collections.abc import Sequence

from oie_jax.data import format as fmt
from oie_jax.data.format import Record

KINDS = ("missed entity", "spurious entity", "wrong label", "boundary error")


def label_and_span(task: str, item: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    normalized = tuple(fmt.normalize(v) for v in item)
    if fmt.TASKS[task] == "triples":
        return normalized[1], (normalized[0], normalized[2])
    return normalized[0], normalized[1:]


def intervals(text: str, value: str) -> list[tuple[int, int]]:
    """Every [start, end) where `value` occurs in `text` (both normalized)."""
    found, start = [], text.find(value) if value else -1
    while start >= 0:
        found.append((start, start + len(value)))
        start = text.find(value, start + 1)
    return found


def overlapping(text: str, a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two spans that differ but overlap somewhere in the text, field by field."""
    if a == b or len(a) != len(b):
        return False
    return all(x == y or any(s < e2 and s2 < e for s, e in intervals(text, x) for s2, e2 in intervals(text, y))
               for x, y in zip(a, b))


@dataclasses.dataclass
class ErrorAnalysis:
    counts: dict[tuple[str, str], list[int]]  # (language, label) -> [tp, pred, gold]
    confusion: collections.Counter  # (language, gold label, predicted label) on spans both sides hold
    kinds: collections.Counter  # error kind -> items
    examples: dict[str, list[str]]  # error kind -> a few record ids

    def per_label(self) -> list[tuple[str, str, int, int, int, float, float, float]]:
        """(language, label, tp, pred, gold, P, R, F1), most frequent gold labels first."""
        rows = []
        for (language, label), (tp, pred, gold) in self.counts.items():
            p, r = tp / pred if pred else 0.0, tp / gold if gold else 0.0
            rows.append((language, label, tp, pred, gold, p, r, 2 * p * r / (p + r) if p + r else 0.0))
        return sorted(rows, key=lambda row: (row[0], -row[4], -row[3], row[1]))


PAIRINGS = (  # (kind, whether a gold and a predicted item left unmatched make one error of that kind)
    ("wrong label", lambda text, g, p: g[1] == p[1] and g[0] != p[0]),
    ("boundary error", lambda text, g, p: g[0] == p[0] and overlapping(text, g[1], p[1])),
)


def explain(text: str, missed: list, spurious: list) -> collections.Counter:
    """The errors of one example's unmatched (label, span) items: pairs first, then what is left."""
    kinds = collections.Counter()
    for kind, fits in PAIRINGS:
        for p in list(spurious):
            g = next((g for g in missed if fits(text, g, p)), None)
            if g is not None:
                missed.remove(g)
                spurious.remove(p)
                kinds[kind] += 1
    kinds["missed entity"] += len(missed)
    kinds["spurious entity"] += len(spurious)
    return +kinds  # without the kinds that did not occur


def paired_labels(gold: collections.Counter, pred: collections.Counter) -> list[tuple[str, str]]:
    """(gold label, predicted label) of the predicted items whose span a gold item holds. A prediction
    pairs with the gold label it matches when its span has that one among others ("Jordan" a person and
    a place, predicted a place: right, not confused); the rest pair with the span's labels left, in order."""
    gold_spans = collections.defaultdict(list)
    for label, span in gold.elements():
        gold_spans[span].append(label)
    pairs, unmatched = [], []
    for label, span in pred.elements():
        if label in gold_spans[span]:
            gold_spans[span].remove(label)
            pairs.append((label, label))
        else:
            unmatched.append((label, span))
    for label, span in unmatched:
        if gold_spans[span]:
            pairs.append((gold_spans[span].pop(0), label))
    return pairs


def analyse(golds: Sequence[Record], outputs: Sequence[str], shown: int = 3) -> ErrorAnalysis:
    counts: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    confusion, kinds = collections.Counter(), collections.Counter()
    examples: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for gold_record, output in zip(golds, outputs):
        task, language = gold_record.task, gold_record.language
        gold = collections.Counter(label_and_span(task, item) for item in gold_record.items)
        pred = collections.Counter(label_and_span(task, item) for item in fmt.parse(output, task).items)
        matched = gold & pred
        for (label, _), n in gold.items():
            counts[(language, label)][2] += n
        for (label, _), n in pred.items():
            counts[(language, label)][1] += n
        for (label, _), n in matched.items():
            counts[(language, label)][0] += n
        confusion.update((language, g, p) for g, p in paired_labels(gold, pred))
        found = explain(fmt.normalize(gold_record.text), list((gold - matched).elements()),
                        list((pred - matched).elements()))
        kinds.update(found)
        for kind in found:
            if len(examples[kind]) < shown:
                examples[kind].append(gold_record.id)
    return ErrorAnalysis(dict(counts), confusion, kinds, examples)


def markdown(analysis: ErrorAnalysis, title: str = "Error analysis", top: int = 30) -> str:
    total = sum(analysis.kinds.values())
    lines = [f"# {title}", "", "Items compared after normalization, as the WL metric compares them "
             "(definitions: oie_jax/eval/errors.py).", "", "## Kinds of error", "",
             "| kind | items | share | examples (ids) |", "|---|---:|---:|---|"]
    for kind in KINDS:
        n = analysis.kinds.get(kind, 0)
        share = f"{100 * n / total:.1f}%" if total else "-"
        lines.append(f"| {kind} | {n:,} | {share} | {', '.join(analysis.examples[kind]) or '-'} |")
    lines += ["", "## Per label (P, R, F1 in %)", "", "| language | label | gold | predicted | matched | P | R | F1 |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for language, label, tp, pred, gold, p, r, f1 in analysis.per_label():
        lines.append(f"| {language or '-'} | {label} | {gold:,} | {pred:,} | {tp:,} | {100 * p:.1f} | {100 * r:.1f} | "
                     f"{100 * f1:.1f} |")
    numbered = [(name, label) for name, label, by_number in plotted_names(plotted_rows(analysis)) if by_number]
    if numbered:
        lines += ["", "## Labels drawn by number in errors.png (its font has no glyphs for them)", "",
                  "| in errors.png | label |", "|---|---|", *(f"| {name} | {label} |" for name, label in numbered)]
    lines += ["", f"## Labels on spans both sides hold (the {top} most frequent pairs)", "",
              "| language | gold label | predicted label | items |", "|---|---|---|---:|"]
    for (language, gold, pred), n in analysis.confusion.most_common(top):
        lines.append(f"| {language or '-'} | {gold} | {pred}{'' if gold == pred else ' (wrong)'} | {n:,} |")
    return "\n".join(lines) + "\n"


def to_json(analysis: ErrorAnalysis) -> dict:
    return {"kinds": {kind: analysis.kinds.get(kind, 0) for kind in KINDS}, "examples": analysis.examples,
            "per_label": [dict(zip(("language", "label", "tp", "pred", "gold", "p", "r", "f1"), row))
                          for row in analysis.per_label()],
            "confusion": [{"language": language, "gold": gold, "pred": pred, "items": n}
                          for (language, gold, pred), n in analysis.confusion.most_common()]}


def write(analysis: ErrorAnalysis, out, title: str = "Error analysis") -> None:
    """errors.md, errors.json and errors.png in the directory `out`."""
    import json

    (out / "errors.md").write_text(markdown(analysis, title), encoding="utf-8")
    (out / "errors.json").write_text(json.dumps(to_json(analysis), ensure_ascii=False, indent=2) + "\n",
                                     encoding="utf-8")
    plot(analysis, out / "errors.png")


PLOTTED = 20  # labels in the F1 panel of errors.png: those with the most gold items


def plotted_rows(analysis: ErrorAnalysis) -> list:
    return sorted(analysis.per_label(), key=lambda row: -row[4])[:PLOTTED]


def plotted_names(rows: list) -> list[tuple[str, str, bool]]:
    """(name in errors.png, label, whether by number) of the plotted rows: the label and its language, or
    "#k" for a label the plot's font cannot draw (Japanese, Chinese in matplotlib's DejaVu Sans), listed in
    errors.md."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    glyphs = FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap()
    names, numbered = [], 0
    for language, label, *_ in rows:
        suffix = f" ({language})" if language else ""
        drawable = all(ord(c) in glyphs for c in label + suffix)
        numbered += not drawable
        names.append((f"{label}{suffix}" if drawable else f"#{numbered}{suffix}", label, not drawable))
    return names


def plot(analysis: ErrorAnalysis, path) -> None:
    """Two panels: items per kind of error, and F1 of the labels with the most gold items (by number where
    the font has no glyphs for them: `plotted_names`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = plotted_rows(analysis)
    figure, (kinds_ax, labels_ax) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.3 * len(rows) + 1.5)))
    kinds_ax.barh(list(KINDS)[::-1], [analysis.kinds.get(kind, 0) for kind in KINDS][::-1], color="tab:red")
    kinds_ax.set_xlabel("items")
    kinds_ax.set_title("Kinds of error")
    names = [name for name, _, _ in plotted_names(rows)][::-1]
    labels_ax.barh(names, [100 * row[7] for row in rows][::-1])
    labels_ax.set_xlim(0, 100)
    labels_ax.set_xlabel("F1 (%)")
    labels_ax.set_title(f"F1 of the {len(rows)} most frequent gold labels")
    figure.tight_layout()
    with path.open("wb") as f:
        figure.savefig(f, format="png", dpi=110)
    plt.close(figure)
