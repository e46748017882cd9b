"""`oie-jax data inspect`: what a corpus holds, and what could not be read."""

import collections
import unicodedata

from oie_jax.data.sources import LoadResult

MAX_PROBLEMS_SHOWN = 20


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _table(title: str, counts: collections.Counter) -> list[str]:
    if not counts:
        return []
    width = max(_display_width(str(k)) for k in counts)
    return [f"{title}:"] + [f"  {k}{' ' * (width - _display_width(str(k)))}  {n:>7,}" for k, n in counts.most_common()]


def report(source: str, result: LoadResult) -> str:
    records = result.records
    lines = [f"source: {source}", *result.summary_lines(),
             f"records: {len(records):,} kept, {len(result.problems):,} rejected, {len(result.warnings):,} kept with a "
             "warning"]
    lines += _table("language", collections.Counter(r.language or "?" for r in records))
    lines += _table("subset", collections.Counter(r.subset or "-" for r in records))
    lines += _table("task", collections.Counter(r.task for r in records))
    labels = collections.Counter(r.label for r in records if r.label)
    unlabelled = sum(1 for r in records if not r.label)
    lines += _table("text label", labels)
    if unlabelled:
        lines.append(f"  (no text-level label: {unlabelled:,} records; the source has none)")
    lines += _table("item label", collections.Counter(item[0] for r in records for item in r.items
                                                       if r.task == "NER" or len(item) == 2))
    grounded = [r.grounding for r in records if r.grounding is not None]
    if grounded:
        entities = sum(len(g.boxes) for g in grounded)
        groundable = sum(1 for g in grounded for boxes in g.boxes if boxes)
        lines.append(f"grounding: {groundable:,} of {entities:,} entities have boxes "
                     f"({groundable / max(entities, 1):.1%} groundable), "
                     f"{sum(len(b) for g in grounded for b in g.boxes):,} boxes")
    lines += _listed("rejected records", result.problems)
    lines += _listed("kept with a warning", result.warnings)
    return "\n".join(lines)


def _listed(title: str, problems: list) -> list[str]:
    if not problems:
        return []
    lines = _table(f"{title} by reason", collections.Counter(p.reason for p in problems))
    lines += [f"  {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN:,} more")
    return lines
