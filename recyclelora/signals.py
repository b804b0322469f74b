"""Stop requests from outside the process: Ctrl-C (SIGINT), ``kill`` (SIGTERM) and SIGUSR1 / SIGUSR2, which
cluster schedulers send before they preempt a job or its time limit ends (SLURM's ``--signal``, submitit's
requeue). Free of torch.

Two ways to take them, both restoring the previous handlers on exit:

- :func:`raise_on_stop_signals`: a stop signal raises :class:`Interrupted` where the main thread is, so every
  ``with`` block unwinds (tracking runs are ended, partial outputs removed) and the process exits with
  ``128 + signum``, as the shell reports a process killed by that signal.
- :func:`deferred_stop_signals`: the signal is only recorded (:class:`StopRequest`); a loop checks it at a point
  where its state is whole (a training step's end), saves what it must, then raises :class:`Interrupted`.

Handlers can only be installed from the main thread; elsewhere both are no-ops (a thread cannot take signals).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from recyclelora.errors import UserError

#: The signals that ask a run to stop and keep what it has.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(UserError):
    """The process was asked to stop by ``signum``; the message says what was kept and how to continue."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """``128 + signum``: the status a shell gives a process ended by that signal."""
        return 128 + self.signum


class StopRequest:
    """The first stop signal received while :func:`deferred_stop_signals` is active (``None`` until then)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


@contextlib.contextmanager
def _handlers(handler: signal.Handlers | object) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def raise_on_stop_signals() -> Iterator[None]:
    """Raise :class:`Interrupted` in the main thread on any of :data:`STOP_SIGNALS` inside the block."""
    with _handlers(_raise):
        yield


@contextlib.contextmanager
def deferred_stop_signals() -> Iterator[StopRequest]:
    """Record the first of :data:`STOP_SIGNALS` inside the block in the yielded :class:`StopRequest`; the caller
    checks it when its state is whole and stops (raising :class:`Interrupted`)."""
    request = StopRequest()
    with _handlers(request._record):
        yield request
