"""The loss report of a translation run: records in, kept, and rejected per stage and reason, per
target language and subset; as JSON, Markdown and a bar chart."""

import collections
import json

from etils import epath


def loss_report(outcomes, stages: tuple[str, ...], files: list[str]) -> dict:
    groups: dict[tuple[str, str], dict] = {}
    answers = collections.Counter(o.how for o in outcomes)
    for o in outcomes:
        group = groups.setdefault((o.target, o.source.record.subset), {
            "language": o.target, "subset": o.source.record.subset, "in": 0, "kept": 0, "rejected": 0,
            "by_stage": {stage: {} for stage in stages}})
        group["in"] += 1
        if o.kept:
            group["kept"] += 1
        else:
            group["rejected"] += 1
            reasons = group["by_stage"][o.rejection.stage]
            reasons[o.rejection.reason] = reasons.get(o.rejection.reason, 0) + 1
    rows = [groups[key] for key in sorted(groups)]
    total = {field: sum(row[field] for row in rows) for field in ("in", "kept", "rejected")}
    return {"stages": list(stages), "total": total, "groups": rows,
            "answers": {how: answers.get(how, 0) for how in ("asked", "cached", "calibrated", "unasked")},
            "files": files}


def funnel(row: dict, stages) -> list[tuple[str, int, int, int]]:
    """(stage, entering, rejected, left) for one group: each stage sees what earlier stages kept."""
    entering, lines = row["in"], []
    for stage in stages:
        rejected = sum(row["by_stage"][stage].values())
        lines.append((stage, entering, rejected, entering - rejected))
        entering -= rejected
    return lines


def markdown(report: dict) -> str:
    stages, total = report["stages"], report["total"]
    share = f"{100 * total['kept'] / total['in']:.1f}%" if total["in"] else "-"
    answers = ", ".join(f"{n} {how}" for how, n in report["answers"].items())
    lines = ["# Translation loss report", "",
             f"{total['in']} records in, {total['kept']} kept ({share}), {total['rejected']} rejected. "
             f"Answers: {answers}.", "",
             "| language | subset | in | kept | " + " | ".join(stages) + " |",
             "|---|---|---|---|" + "---|" * len(stages)]
    for row in report["groups"]:
        cells = [str(sum(row["by_stage"][stage].values())) for stage in stages]
        lines.append(f"| {row['language']} | {row['subset']} | {row['in']} | {row['kept']} | {' | '.join(cells)} |")
    lines += ["", "## Rejections by stage and reason", "",
              "| language | subset | stage | reason | records |", "|---|---|---|---|---|"]
    for row in report["groups"]:
        for stage in stages:
            for reason, n in sorted(row["by_stage"][stage].items(), key=lambda kv: -kv[1]):
                lines.append(f"| {row['language']} | {row['subset']} | {stage} | {reason} | {n} |")
    lines += ["", "## Funnel", "", "| language | subset | stage | entering | rejected | left |",
              "|---|---|---|---|---|---|"]
    for row in report["groups"]:
        for stage, entering, rejected, left in funnel(row, stages):
            lines.append(f"| {row['language']} | {row['subset']} | {stage} | {entering} | {rejected} | {left} |")
    lines += ["", "Files: " + (", ".join(f"`{name}`" for name in report["files"]) or "none (nothing kept)"), ""]
    return "\n".join(lines)


def write_report(report: dict, out: epath.Path) -> None:
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    write_chart(report, out / "report.png")


def write_chart(report: dict, path: epath.Path) -> None:
    """Stacked bars per language and subset: kept, then the rejections of each stage."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, stages = report["groups"], report["stages"]
    names = [f"{row['language']} {row['subset']}" for row in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 4))
    bottom = [0] * len(rows)
    for part in ("kept", *stages):
        values = [row["kept"] if part == "kept" else sum(row["by_stage"][part].values()) for row in rows]
        if any(values):
            ax.bar(names, values, bottom=bottom, label=part if part == "kept" else f"rejected: {part}")
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("records")
    ax.set_title("Translation: records kept and rejected per stage")
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path.write_bytes(buffer.getvalue())
