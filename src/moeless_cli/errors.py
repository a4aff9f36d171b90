"""The one exception type that reaches users as a one-line message (no traceback)."""

from collections.abc import Iterable
from typing import Any


class MoelessError(Exception):
    """A problem with the user's input or environment, phrased so the user can act on it.

    The CLI prints `error: <message>` on one line and exits with `exit_code`.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class UnwrittenReport(MoelessError):
    """A run finished but its report could not be written: the CLI prints `report` (JSON on
    stdout) before the one-line error, so a finished run's results are never lost."""

    def __init__(self, message: str, report: Any, exit_code: int = 2):
        super().__init__(message, exit_code)
        self.report = report


def require_choice(what: str, value: str, choices: Iterable[str]) -> None:
    """Reject `value` unless it is one of `choices`, naming them all (e.g. what="--policy")."""
    options = list(choices)
    if value not in options:
        raise MoelessError(f"unknown {what} {value!r}; choose one of {', '.join(options)}")
