"""The errors a user sees: the CLI prints the message on one line, no traceback, and exits with
exit_code (2 = a bad option or usage, 1 = a runtime failure). data.DataError is the data
module's own, with the same two attributes."""


class NpmlpError(Exception):
    """A problem the user can fix. `exit_code` 2 = bad usage/option, 1 = runtime failure."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(NpmlpError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
