"""Process-group set-up for ``torchrun`` (NCCL on CUDA, gloo on CPU) and small collective helpers.

When a process of a multi-process run dies, torchrun stops the others on its node and prints a summary that names
the rank which failed first. Processes on other nodes learn of it from their next collective, which fails at once
(the peer's connection closes) or after :func:`timeout` (a peer that hangs or whose machine vanished): they exit
with one line (:class:`CollectiveFailure`, a user error) rather than a traceback.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from recyclelora.errors import InvalidInputError, UserError, first_sentence

#: Environment variable: seconds a collective waits for the other processes before the run stops.
TIMEOUT_ENV = "RECYCLELORA_DIST_TIMEOUT"
#: Default of :data:`TIMEOUT_ENV`: gloo's own default, long enough for validation on the main process while the
#: others wait at a barrier.
DEFAULT_TIMEOUT_S = 1800.0
#: What gloo's errors say when a peer is gone or silent (it raises a plain RuntimeError; NCCL a DistBackendError).
_GLOO_PEER_ERROR = re.compile(r"gloo/transport|pair closure|by peer|Socket closed|Timed out waiting")
#: Seconds a process whose collective failed waits before it exits, while torchrun notices a dead sibling.
PEER_GRACE_S = 1.0
_broken = False


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size == 1`` without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit ``cuda`` without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("train.device is 'cuda' but no CUDA device is visible here: use 'auto' or 'cpu'")
    return torch.device(device)


def setup(device: str) -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    base = resolve_device(device)
    if world_size == 1:
        return DistInfo(0, 1, base)
    local_rank = int(os.environ["LOCAL_RANK"])
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        backend, limit = "nccl" if base.type == "cuda" else "gloo", timeout()
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        if agent_store and os.environ.get("GROUP_WORLD_SIZE") == "1":
            # torchrun (c10d rendezvous, one node) keeps one store for all the worker groups it starts: with
            # --max-restarts, a restarted group could read the addresses the failed group published and hang
            # connecting to them (pytorch/pytorch#135712), so each group keys its own. On several nodes the
            # restart counts may differ between nodes: there, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 is the remedy.
            store, rank, size = next(dist.rendezvous("env://", timeout=limit))
            store.set_timeout(limit)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"recyclelora/attempt_{attempt}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=limit)
        else:
            dist.init_process_group(backend, timeout=limit)
    return DistInfo(dist.get_rank(), world_size, base)


def timeout() -> timedelta:
    """How long a collective waits for the other processes: :data:`TIMEOUT_ENV` seconds (default 30 minutes)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InvalidInputError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return timedelta(seconds=seconds)


class CollectiveFailure(UserError):
    """A collective failed under torchrun: another process exited or stopped answering within :func:`timeout`.

    The process group cannot be used any more: the CLI prints this as one line and exits with status 1, instead of
    the backend's traceback; torchrun's summary names the rank that failed first.
    """


def _is_peer_failure(error: RuntimeError) -> bool:
    return isinstance(error, dist.DistError) or bool(_GLOO_PEER_ERROR.search(str(error)))


@contextmanager
def stop_on_peer_failure(info: DistInfo) -> Iterator[None]:
    """Turn a failed collective of a multi-process run into :class:`CollectiveFailure` (alone: a no-op).

    Other errors pass unchanged: the process that raises one is the root cause, and its traceback is wanted.
    """
    global _broken
    try:
        yield
    except RuntimeError as error:  # dist.DistError is one
        if info.world_size == 1 or not _is_peer_failure(error):
            raise
        _broken = True
        if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            # when the process that died ran on this node, torchrun's agent sees it within its monitor interval
            # (0.1 s) and stops this one: its summary then names that process as the root cause, not this one
            time.sleep(PEER_GRACE_S)
        detail = re.sub(r"^\[[^\]]*\]\s*", "", first_sentence(error))[:200]  # gloo: "[file:line] message."
        raise CollectiveFailure(
            f"rank {info.rank} of {info.world_size} stops: another process of the run exited, or did not answer "
            f"within {timeout().total_seconds():g} s ({TIMEOUT_ENV}); torchrun's summary names the rank that "
            f"failed first [{detail}]"
        ) from error


def teardown() -> None:
    """Leave the process group (left as is after :class:`CollectiveFailure`: the process is about to exit)."""
    global _broken
    if dist.is_initialized() and not _broken:
        dist.destroy_process_group()
    _broken = False


def mean_across(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over all processes (identity when alone)."""
    if info.world_size > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world_size
    return values


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def agree_on_stop(signum: int | None, info: DistInfo) -> int:
    """The stop signal any process has received, 0 if none (the largest number when several differ): one
    all-reduce of one number, so every process stops at the same step (alone: ``signum`` itself)."""
    if info.world_size == 1:
        return signum or 0
    flag = torch.tensor([signum or 0], device=info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())
