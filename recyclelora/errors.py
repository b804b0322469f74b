"""What a user can fix: :class:`UserError` and its subclasses (the message says how), and
``FileNotFoundError`` for a path they gave. The command lines print these as one ``error:`` line; any other
exception (a ``ValueError`` from numpy, a ``KeyError`` in our code) is a bug, shown with its traceback."""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(RuntimeError):
    """A failure outside the code: bad data, an unreachable server, a diverged run. Its message says what to do."""


class InvalidInputError(UserError, ValueError):
    """A value the user gave (a param, an option, a file's content) that is refused; also a ``ValueError``, as
    Python callers of the library expect."""


#: Every exception type the command lines report as one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, UserError)


def first_sentence(error: BaseException) -> str:
    """The first sentence of the error's first non-blank line, or its type's name: the gist of a third-party
    error (torch and gloo append paragraphs of advice) to quote in one line."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return line.split(". ")[0] or type(error).__name__


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (an optional dependency) or raise one line naming the extra that installs it.

    ``purpose`` starts the message: ``"ONNX export"`` -> ``ONNX export needs the onnx extra: pip install
    'recyclelora[onnx]' (No module named 'onnx')``. Only a missing ``module`` (or one of its parents) becomes a
    :class:`UserError`; an installed package that fails to import raises its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or not (module == error.name or module.startswith(error.name + ".")):
            raise
        raise UserError(
            f"{purpose} needs the {extra} extra: pip install 'recyclelora[{extra}]' ({error})"
        ) from error
