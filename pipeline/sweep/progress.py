"""``--wait``: a live table of a sweep's jobs (queued, running, done, failed) until none is pending, then the
failures, each with its log, as one error."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from rich.live import Live
from rich.table import Table

from recyclelora.cli.common import console
from recyclelora.errors import UserError

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
_STYLES = {QUEUED: "dim", RUNNING: "yellow", DONE: "green", FAILED: "red"}


class Row(NamedTuple):
    """One job of a sweep as last seen: its name, state, where it runs and a detail (log file, error)."""

    name: str
    state: str
    job: str = ""
    node: str = ""
    detail: str = ""


class SweepFailed(UserError):
    """Some experiments of the sweep failed (listed above the error, each with its log)."""


def table(rows: Sequence[Row], elapsed: float | None = None) -> Table:
    counts = ", ".join(f"{sum(row.state == state for row in rows)} {state}" for state in _STYLES)
    watched = f" ({elapsed:.0f} s)" if elapsed is not None else ""
    view = Table(title=f"sweep: {counts}{watched}", title_justify="left")
    for column in ("experiment", "state", "job", "node", "log / error"):
        view.add_column(column, overflow="fold")
    for row in rows:
        view.add_row(row.name, f"[{_STYLES[row.state]}]{row.state}[/]", row.job, row.node, row.detail)
    return view


def watch(poll: Callable[[], list[Row]], seconds: float, what: str) -> list[Row]:
    """Show ``poll()``'s rows every ``seconds`` until none is queued or running; raise :class:`SweepFailed`
    after listing the failed ones (``what``: how to retry them)."""
    start = time.monotonic()
    with Live(console=console, auto_refresh=False, transient=True) as live:  # the final table stays, below
        while True:
            rows = poll()
            live.update(table(rows, time.monotonic() - start), refresh=True)
            if not any(row.state in (QUEUED, RUNNING) for row in rows):
                break
            time.sleep(seconds)
    failed = show(rows, time.monotonic() - start)
    if failed:
        raise SweepFailed(
            f"{len(failed)} of {len(rows)} job(s) failed (listed above with their logs): {what}"
        )
    return rows


def show(rows: Sequence[Row], elapsed: float | None = None) -> list[Row]:
    """Print the table of ``rows`` (``elapsed`` seconds of watching in its title), then one ``failed:`` line per
    failed job with its error and log; return the failed rows."""
    console.print(table(rows, elapsed))
    failed = [row for row in rows if row.state == FAILED]
    for row in failed:
        console.print(
            f"failed: {row.name} (job {row.job or '-'}): {row.detail}", highlight=False, soft_wrap=True
        )
    return failed
