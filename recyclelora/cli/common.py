"""What every command shares: the consoles, the library's log records on stderr, and turning a library's
user-facing errors into one red line.

Public: the pipeline's stage commands (``python -m pipeline``) use the same helpers. Light on purpose (typer,
rich): command modules import it at the top, and ``--help`` must not import torch."""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from typer.exceptions import TyperException

from recyclelora.errors import USER_ERRORS
from recyclelora.signals import Interrupted

# soft wrap: a long line (a path) is never broken by a newline, so it stays whole when copied or read by a script;
# tables and progress bars still fit the terminal
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
_log_handler = RichHandler(console=errors, show_time=False, show_path=False)

#: Set to 1 (or pass ``recyclelora-cli --debug``) to get the traceback of a user error instead of one line.
DEBUG_ENV = "RECYCLELORA_DEBUG"
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"
#: The line after the traceback of an error that is not a user error (:func:`user_errors`).
BUG_REPORT = (
    "error: this is a bug in recyclelora, not a problem with your input: please report it to the project's issue "
    "tracker with the traceback above and the command you ran"
)

__all__ = [
    "BUG_REPORT", "DEBUG_ENV", "configure_logging", "console", "debug_enabled", "errors", "message", "root_app", "user_errors",
]  # fmt: skip


def root_app(name: str, help: str) -> typer.Typer:
    """A top-level Typer app with the shared ``--debug`` option (sets :data:`DEBUG_ENV` for the whole process)
    that shows the library's log records (:func:`configure_logging`)."""
    app = typer.Typer(name=name, help=help, no_args_is_help=True, pretty_exceptions_show_locals=False)

    @app.callback()
    def main(
        debug: Annotated[
            bool,
            typer.Option("--debug", help=f"Show the traceback of an error and debug messages (or set {DEBUG_ENV}=1)."),
        ] = False,
    ) -> None:
        if debug:
            os.environ[DEBUG_ENV] = "1"
        configure_logging(debug_enabled())

    return app


def configure_logging(debug: bool) -> None:
    """Show the library's log records (``recyclelora.*``) on stderr through rich: INFO and up, DEBUG with ``debug``.

    Other packages' loggers are left as they are; calling it again only changes the level."""
    logger = logging.getLogger("recyclelora")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    if _log_handler not in logger.handlers:
        logger.addHandler(_log_handler)


def debug_enabled() -> bool:
    """Whether user errors propagate with their traceback (``RECYCLELORA_DEBUG`` set and not ``0``)."""
    return os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def message(error: BaseException) -> str:
    """The error's text; for one re-raised from a DataLoader worker (whose text holds the worker's traceback),
    the original error's text."""
    text = str(error)
    if _WORKER_TRACEBACK in text:
        last = text.rstrip().rsplit("\n", 1)[-1]  # "<module>.<ErrorType>: <original text>"
        text = last.split(": ", 1)[-1]
    return text


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error (:data:`recyclelora.errors.USER_ERRORS`) as ``error: <message>`` on stderr and exit with status 1
    (``128 + signum`` for :class:`~recyclelora.signals.Interrupted`), not a traceback. Any other exception is a
    bug: its traceback, then :data:`BUG_REPORT`, and status 1.

    With :func:`debug_enabled` the error propagates unchanged, traceback included.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, TyperException):  # the command line's own exits and usage errors
        raise
    except USER_ERRORS as error:
        if debug_enabled():
            raise
        errors.print(f"[red]error:[/red] {escape(message(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code if isinstance(error, Interrupted) else 1) from error
    except Exception as error:
        if debug_enabled():
            raise
        errors.file.write("".join(traceback.format_exception(error)))
        errors.print(f"[red]{escape(BUG_REPORT)}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
