"""The one exception the launcher shows to users: a single line, no traceback."""


class LaunchError(Exception):
    """A user-facing failure: bad flag, missing credentials, AWS refusal, failed node.

    ``fab`` prints ``str(error)`` on one line and exits with ``code`` (1 by default, 2 for
    bad flags, 130 after Ctrl-C), as shell tools do.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


class UsageError(LaunchError):
    """A bad flag or missing local prerequisite, found before anything is created."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)
