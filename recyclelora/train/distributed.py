"""Process-group set-up for ``torchrun`` (NCCL on CUDA, gloo on CPU) and small collective helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
        raise RuntimeError("train.device='cuda' but no CUDA device is visible: use 'auto' or 'cpu'")
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
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), world_size, base)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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
