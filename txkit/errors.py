"""The one exception type for mistakes a user can make (bad file, bad key, bad option).

The CLI prints a TxkitError as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class TxkitError(Exception):
    """A user-facing error: the message names the file, line or key at fault."""

    exit_code = 2
