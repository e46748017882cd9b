"""A flaky filesystem for tests: reading a file of epath's local paths whose path matches a pattern raises
the error a bucket or a network mount gives when it times out or refuses access. Orbax reads checkpoint
metadata through epath, so a run meets the error where it would meet the real one.

    install(r"checkpoints/12/state/_METADATA$", "timeout", monkeypatch.setattr)
    python -m tests.flaky_fs PATTERN KIND ARGS...     `oie-jax ARGS...` in a process with the same
"""

import re
import sys

from etils import epath

ERRORS = {
    "timeout": lambda path: TimeoutError(f"reading {path}: the bucket did not answer within 60 s"),
    "permission": lambda path: PermissionError(13, "Permission denied", str(path)),
}


def install(pattern: str, kind: str, patch=setattr) -> None:
    """From now on (or until `patch`, e.g. pytest's monkeypatch.setattr, is undone)."""
    local = type(epath.Path("/"))

    def failing(read):
        def wrapped(self, *args, **kwargs):
            if re.search(pattern, str(self)):
                raise ERRORS[kind](self)
            return read(self, *args, **kwargs)
        return wrapped

    for name in ("read_text", "read_bytes"):
        patch(local, name, failing(getattr(local, name)))


if __name__ == "__main__":
    install(sys.argv[1], sys.argv[2])
    from oie_jax.cli import main

    raise SystemExit(main(sys.argv[3:]))
