"""The readers by name, and a guess of which one a path needs."""

import json
from pathlib import Path

from oie_jax.data.sources import LoadResult, conll, expand, load, mmm, mnre, records, stockmark
from oie_jax.errors import UserError
from oie_jax.files import location

SOURCES = {
    "records": (records.read, (".jsonl",)),
    "mmm": (mmm.read, (".json", ".jsonl")),
    "stockmark": (stockmark.read, (".json",)),
    "conll": (conll.read, (".txt", ".conll", ".bio")),
    "mner": (conll.read_mner, (".txt",)),
    "gmner": (conll.read_gmner, (".txt",)),
    "mnre": (mnre.read, (".txt",)),
}


ALL_SUFFIXES = tuple(sorted({s for _, suffixes in SOURCES.values() for s in suffixes}))


def detect(path: str) -> str:
    """gmner for Twitter-GMNER text (IMGID lines, an xml/ folder beside its own) or its folder, mner for other
    text of IMGID lines (Twitter-2015/2017), mnre for text of dict lines (MNRE), conll for other text,
    stockmark for JSON with `curid`, records for our unified JSON lines (`items`), mmm otherwise."""
    p = Path(path)
    if p.is_dir():
        if (p / "txt").is_dir() and (p / "xml").is_dir():
            return "gmner"
        first = next((f for f in sorted(p.rglob("*")) if f.suffix in (".txt", ".json", ".jsonl")), None)
        return detect(str(first)) if first else "mmm"
    if p.suffix in (".txt", ".conll", ".bio"):
        with open(p, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        if first.startswith("IMGID:"):
            return "gmner" if (p.resolve().parent.parent / "xml").is_dir() else "mner"
        return "mnre" if first.lstrip().startswith("{") else "conll"
    with open(p, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    if '"curid"' in head:
        return "stockmark"
    return "records" if '"items"' in head and '"task"' in head else "mmm"


def load_source(paths: list[str], source: str = "auto", strict: bool = False,
                keep_all: bool = False) -> tuple[str, LoadResult]:
    """Records of one format from files, directories and globs; `auto` guesses it from the first.
    `keep_all` keeps records that training would reject (gold data to score; see `sources.load`)."""
    if source == "auto":
        first = Path(paths[0])
        source = detect(paths[0] if first.is_dir() else str(expand(paths[:1], ALL_SUFFIXES)[0]))
    if source not in SOURCES:
        raise UserError(f"unknown corpus format {source!r}: use auto or one of {', '.join(SOURCES)}")
    reader, suffixes = SOURCES[source]
    if source == "gmner":
        paths = [str(Path(p) / "txt") if (Path(p) / "txt").is_dir() else p for p in paths]
    return source, load(paths, reader, suffixes, strict=strict, keep_all=keep_all)


def write_jsonl(records, out) -> int:
    """Records as JSON Lines at `out`, a local path or a bucket URL (a run's workdir may be either)."""
    out = location(out)
    if out.is_dir():
        raise UserError("output is a directory; name a .jsonl file", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    return len(records)
