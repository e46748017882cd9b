"""Scores as the paper lays them out (rows: subsets; columns: TL, WL, ALL F1 per language), as text,
Markdown, JSON and a bar chart. A metric a group has no gold for (TL and ALL of a source without text
labels) prints as '-' and is null in the JSON."""

import json

import numpy as np
from etils import epath

from oie_jax.errors import UserError
from oie_jax.eval import DEFAULT_METRIC
from oie_jax.eval.encode import subset_order
from oie_jax.eval.metrics import COUNTS, METRICS, STATS, TALLIES, Scores
from oie_jax.files import location

HEADS = {"tl": "TL", "wl": "WL", "all": "ALL"}


def subsets_of(scores: Scores) -> list[str]:
    return sorted({subset for subset, _ in scores.groups.keys}, key=subset_order)


def f1_value(scores: Scores, subset: str, language: str, m: int) -> float | None:
    """F1 of metric m for one group; None when the group is absent or its gold holds nothing for m."""
    key = (subset, language)
    if key not in scores.groups.keys:
        return None
    i = scores.groups.keys.index(key)
    return float(scores.group[i, m, 2]) if scores.counts[i, m, 2] > 0 else None


def f1_cell(scores: Scores, subset: str, language: str, m: int) -> str:
    value = f1_value(scores, subset, language, m)
    return "-" if value is None else percent(value)


def average_cell(scores: Scores, kind: str, language: str, m: int) -> str:
    l = scores.groups.languages.index(language)  # noqa: E741
    members = [i for i, (_, lang) in enumerate(scores.groups.keys) if lang == language]
    if not any(scores.counts[i, m, 2] > 0 for i in members):
        return "-"
    table = scores.language_micro if kind == "micro" else scores.language_macro
    return percent(table[l, m, 2])


def percent(value) -> str:
    return f"{100 * float(value):.1f}"


def f1_rows(scores: Scores) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the F1 table: one row per subset, then micro and macro per language."""
    header = ["subset"] + [f"{lang or '-'} {HEADS[m]}" for lang in scores.groups.languages for m in METRICS]
    rows = []
    for subset in subsets_of(scores):
        rows.append([subset or "-"] + [f1_cell(scores, subset, lang, m) for lang in scores.groups.languages
                                       for m in range(len(METRICS))])
    for kind in ("micro", "macro"):
        rows.append([kind] + [average_cell(scores, kind, lang, m) for lang in scores.groups.languages
                              for m in range(len(METRICS))])
    return header, rows


def overall_line(scores: Scores) -> str:
    parts = []
    for kind, table in (("micro", scores.micro), ("macro", scores.macro)):
        parts.append(f"{kind} " + ", ".join(f"{HEADS[m]} {percent(table[i, 2])}" for i, m in enumerate(METRICS)))
    return f"all {len(scores.groups.keys)} groups, F1: " + "; ".join(parts)


def table_text(scores: Scores) -> str:
    """The F1 table (percent) in fixed-width columns, then the averages over all groups and the notes."""
    header, rows = f1_rows(scores)
    first = max(len(r[0]) for r in [header] + rows)
    languages = [lang or "-" for lang in scores.groups.languages]
    lines = [" " * first + "".join(f"  {lang:^17}" for lang in languages),
             f"{'subset':<{first}}" + "".join(f"  {'TL':>5} {'WL':>5} {'ALL':>5}" for _ in languages)]
    for row in rows:
        cells = row[1:]
        lines.append(f"{row[0]:<{first}}" + "".join(
            f"  {cells[j]:>5} {cells[j + 1]:>5} {cells[j + 2]:>5}" for j in range(0, len(cells), 3)))
    lines.append(f"{scores.examples:,} examples; {overall_line(scores)}")
    return "\n".join(lines + [f"note: {note}" for note in scores.notes])


def markdown(scores: Scores, title: str = "Scores") -> str:
    header, rows = f1_rows(scores)
    out = [f"# {title}", "", f"F1 (%) of {scores.examples:,} examples by subset and language.", "",
           "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    out += ["", f"{overall_line(scores)}. Best-checkpoint default: `{DEFAULT_METRIC}` = "
            f"{percent(scores.metric(DEFAULT_METRIC))}.", "", "## Precision, recall and F1 (%) per group", "",
            "| subset | language | examples | well formed | " + " | ".join(
                f"{HEADS[m]} {s.upper()}" for m in METRICS for s in STATS) + " |",
            "|---|---" + "|---:" * (2 + len(METRICS) * len(STATS)) + "|"]
    for i, (subset, language) in enumerate(scores.groups.keys):
        cells = [percent(scores.group[i, m, s]) if scores.counts[i, m, 2] > 0 else "-"
                 for m in range(len(METRICS)) for s in range(len(STATS))]
        out.append(f"| {subset or '-'} | {language or '-'} | {scores.tallies[i, 0]:,} | {scores.tallies[i, 2]:,} | "
                   + " | ".join(cells) + " |")
    if scores.generation is not None:
        out += ["", "## Generation", "", scores.generation.summary()]
    if scores.notes:
        out += ["", "## Notes", ""] + [f"- {note}" for note in scores.notes]
    out.append("\nDefinitions: docs/metrics.md (exact match after NFKC and whitespace normalization).")
    return "\n".join(out) + "\n"


def metric_json(prf: np.ndarray, counts: np.ndarray | None = None) -> dict:
    """{tl: {p, r, f1[, tp, pred, gold]}, ...}; P/R/F1 are null where the gold holds nothing for a group."""
    out = {}
    for m, metric in enumerate(METRICS):
        defined = counts is None or counts[m, 2] > 0
        entry = {stat: round(float(prf[m, s]), 6) if defined else None for s, stat in enumerate(STATS)}
        if counts is not None:
            entry.update({name: int(counts[m, c]) for c, name in enumerate(COUNTS)})
        out[metric] = entry
    return out


def to_json(scores: Scores) -> dict:
    value = {
        "examples": scores.examples,
        "unlabelled_examples": scores.unlabelled,
        "micro": metric_json(scores.micro, scores.counts.sum(0)),
        "macro": metric_json(scores.macro),
        "languages": {lang: {"micro": metric_json(scores.language_micro[l]),
                             "macro": metric_json(scores.language_macro[l])}
                      for l, lang in enumerate(scores.groups.languages)},  # noqa: E741
        "groups": [{"subset": subset, "language": language,
                    **{name: int(scores.tallies[i, t]) for t, name in enumerate(TALLIES)},
                    **metric_json(scores.group[i], scores.counts[i])}
                   for i, (subset, language) in enumerate(scores.groups.keys)],
        "notes": list(scores.notes),
        "metrics": {name: round(value, 6) for name, value in scores.metrics().items()},
    }
    if scores.generation is not None:
        value["generation"] = scores.generation.to_json()
    return value


def plot(scores: Scores, path) -> None:
    """One panel per metric (TL, WL, ALL): F1 bars per subset, one colour per language."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    subsets, languages = subsets_of(scores), scores.groups.languages
    figure, axes = plt.subplots(len(METRICS), 1, figsize=(max(6.0, 1.1 * len(subsets) + 2), 8), sharex=True)
    width = 0.8 / max(len(languages), 1)
    for m, (metric, ax) in enumerate(zip(METRICS, axes)):
        for l, language in enumerate(languages):  # noqa: E741
            heights = [100 * (f1 if (f1 := f1_value(scores, subset, language, m)) is not None else np.nan)
                       for subset in subsets]
            ax.bar(np.arange(len(subsets)) + (l - (len(languages) - 1) / 2) * width, heights, width,
                   label=language or "-")
        ax.set_ylabel(f"{HEADS[metric]} F1 (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes[-1].set_xticks(np.arange(len(subsets)), [s or "-" for s in subsets], rotation=30, ha="right")
    figure.suptitle(f"F1 per subset and language ({scores.examples:,} examples)")
    figure.tight_layout()
    with output_path(path).open("wb") as f:
        figure.savefig(f, format="png", dpi=120)
    plt.close(figure)


def output_path(path) -> epath.Path:
    path = location(path)
    if path.is_dir():
        raise UserError("output is a directory; name a file", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write(scores: Scores, markdown_path=None, json_path=None, plot_path=None,
          title: str = "Scores") -> list[epath.Path]:
    """Writes the reports that are asked for; returns their paths."""
    written = []
    if markdown_path:
        output_path(markdown_path).write_text(markdown(scores, title), encoding="utf-8")
        written.append(location(markdown_path))
    if json_path:
        text = json.dumps(to_json(scores), indent=2, ensure_ascii=False)
        output_path(json_path).write_text(text + "\n", encoding="utf-8")
        written.append(location(json_path))
    if plot_path:
        plot(scores, plot_path)
        written.append(location(plot_path))
    return written
