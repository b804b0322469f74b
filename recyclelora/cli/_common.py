"""What every command shares: the consoles, and turning a library's user-facing errors into one red line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True)

#: Exceptions the library raises for bad input (missing files, invalid params, incompatible checkpoints).
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Print a user-facing error as ``error: <message>`` on stderr and exit with status 1, not a traceback."""
    try:
        yield
    except (*USER_ERRORS, *extra) as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
