"""The one base class of failures a user can fix (the message says how); ``ValueError`` and
``FileNotFoundError`` are the other two kinds of user error. The CLI prints any of them as one line."""

from __future__ import annotations


class UserError(RuntimeError):
    """A failure outside the code: bad data, an unreachable server, a diverged run. Its message says what to do."""


#: Every exception type the CLI reports as one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, UserError)
