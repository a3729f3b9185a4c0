"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class ProvisorError(Exception):
    """A user-facing error: bad input, a refused operation. The message is one line."""

    exit_code = 2
