"""User-facing errors: the CLI prints them as one line and exits nonzero, without a traceback."""


class UserError(Exception):
    """A problem with the user's input (a path, a file, a config), not a bug in oie-jax."""

    exit_code = 2

    def __init__(self, message: str, path=None):
        super().__init__(f"{path}: {message}" if path is not None else message)
