"""The one exception type the project raises for bad input or bad configuration.

The CLI prints its message (one line per problem, no traceback) and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class BrainlatentError(Exception):
    """A problem the user can fix: the message names the file/row/column/key and the expectation."""

    exit_code = 2

    def __init__(self, message: str, problems: Iterable[str] | None = None) -> None:
        self.problems = list(problems) if problems is not None else []
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


def raise_if_problems(header: str, problems: list[str]) -> None:
    """Raise one :class:`BrainlatentError` listing every problem, if there are any."""
    if problems:
        raise BrainlatentError(f"{header} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):", problems)
