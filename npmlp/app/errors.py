"""The errors a user sees: the CLI prints the message on one line, no traceback, and exits with
exit_code (2 = a bad option or usage, 1 = a runtime failure). NpmlpError, their one base class,
is data.py's, so the reference tier's own (data.DataError) is one too."""
from ..data import NpmlpError

__all__ = ["NpmlpError", "UsageError"]


class UsageError(NpmlpError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
