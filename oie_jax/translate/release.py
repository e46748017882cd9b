"""The files a translation run publishes, switched all at once. A run writes them into a new directory
OUT/releases/N, then points the symbolic link OUT/current at it with one rename (atomic on POSIX);
OUT/data, OUT/review.jsonl and OUT/report.* are links through OUT/current. A crash before the switch
leaves the previous release whole, one after it the new one: never a mix. Older and unfinished
releases are removed after each switch. On a bucket (no links) the files are written in place, each
object whole."""

import os
import pathlib
import shutil

from etils import epath

PUBLISHED = ("data", "review.jsonl", "report.md", "report.json", "report.png")
RELEASES, CURRENT = "releases", "current"


def linkable(out: epath.Path) -> bool:
    return "://" not in str(out)


def new_release(out: epath.Path) -> epath.Path:
    """An empty directory for this run's files (OUT itself on a bucket)."""
    if not linkable(out):
        return out
    releases = out / RELEASES
    releases.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.name) for p in releases.iterdir() if p.name.isdigit()), default=0)
    release = releases / str(number)
    release.mkdir()
    return release


def publish(out, release) -> None:
    """Makes `release` the one OUT shows; then removes the others."""
    if release == out:
        return
    out, release = pathlib.Path(os.fspath(out)), pathlib.Path(os.fspath(release))  # local: links exist
    staged = out / (CURRENT + ".new")
    if staged.is_symlink() or staged.exists():
        staged.unlink()
    os.symlink(os.path.join(RELEASES, release.name), staged)
    os.replace(staged, out / CURRENT)  # the switch
    for name in PUBLISHED:
        link = out / name
        if not link.is_symlink():  # the first release here, or the plain files of an earlier version
            if link.is_dir():
                shutil.rmtree(link)
            elif link.exists():
                link.unlink()
            os.symlink(os.path.join(CURRENT, name), link)
    for old in (out / RELEASES).iterdir():
        if old.name != release.name:
            shutil.rmtree(old)
