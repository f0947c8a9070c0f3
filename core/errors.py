"""User-facing errors.

`MgrError` carries a one-line message meant for the person at the terminal; the CLI prints it
without a traceback and exits with code 2. Raise it for bad input (unknown names, impossible
shapes, missing data, unreadable checkpoints), never for bugs.
"""


class MgrError(ValueError):
    """A problem with the user's input, reported as one line and exit code 2."""
