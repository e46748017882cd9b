"""User-facing errors: the CLI prints them as one line and exits nonzero, without a traceback; and how a
message names a list of things (ids, records) without growing with it."""

SHOWN = 5  # things named in a message; the rest are counted


def shown(values) -> str:
    """The first SHOWN of `values`, comma-separated, and how many more there are."""
    values = list(values)
    more = f" and {len(values) - SHOWN:,} more" if len(values) > SHOWN else ""
    return ", ".join(map(str, values[:SHOWN])) + more


class UserError(Exception):
    """A problem with the user's input (a path, a file, a config), not a bug in oie-jax."""

    exit_code = 2

    def __init__(self, message: str, path=None):
        super().__init__(f"{path}: {message}" if path is not None else message)
