"""Small file helpers shared by the readers and writers."""

import contextlib
import json
import tempfile
from pathlib import Path

from etils import epath

from oie_jax.errors import UserError


def is_url(path) -> bool:
    return "://" in str(path)


def location(path) -> epath.Path:
    """A file or directory that may be in a bucket: a URL (gs://...) as it is, a local path made absolute
    (Orbax refuses relative ones)."""
    return epath.Path(path) if is_url(path) else epath.Path(path).absolute()


@contextlib.contextmanager
def staged(directory: epath.Path):
    """A local directory for writers that need one (safetensors, `save_pretrained`): `directory` itself
    when it is local, else a temporary one whose files are copied into the bucket when the block ends."""
    if not is_url(directory):
        yield Path(directory)
        return
    with tempfile.TemporaryDirectory() as local:
        yield Path(local)
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                target = directory / path.relative_to(local).as_posix()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"invalid JSON ({exc})", path) from None


def read_lines(path, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file (`what` names them in errors: "prompt", "input")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found", path)
    try:
        lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n")]
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text ({exc})", path) from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"no {what} lines (the file has no non-empty line)", path)
    return lines


def prepare_output_dir(out, overwrite: bool) -> epath.Path:
    """An empty output directory (local or in a bucket): a non-empty one is refused unless `overwrite`,
    which empties it, so that no file of an earlier export (a stale shard, a tokenizer) is read back with
    the new ones."""
    out = location(out)
    if out.exists() and not out.is_dir():
        raise UserError("output exists and is not a directory", out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError("output directory is not empty (pass --overwrite to replace its contents)", out)
        out.rmtree()
    out.mkdir(parents=True, exist_ok=True)
    return out
