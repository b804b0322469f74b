"""A seeded, sharded, resumable batch order for iteration-based training."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recyclelora.errors import InvalidInputError


@dataclass(frozen=True)
class BatchOrder:
    """The micro-batches one process sees, cut from global batches that do not depend on the process count.

    Epoch ``e`` shuffles ``range(size)`` with seed ``seed + e`` and cuts it into global batches of
    ``batch_size`` samples, one per optimiser step (the tail that does not fill one is dropped). Each global
    batch is split into ``world_size`` equal shares, process ``rank`` taking share ``rank``, and each share into
    ``grad_accum`` micro-batches of ``batch_size / (world_size * grad_accum)`` samples. So a step trains on the
    same images on 1, 2 or 4 processes and with any accumulation, and micro-batch ``m`` is a pure function of
    ``(seed, m)``: a run resumed at any step sees exactly the batches an uninterrupted run would have.
    """

    size: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.batch_size % (self.world_size * self.grad_accum):
            raise InvalidInputError(
                f"train.batch_size={self.batch_size} is the global batch of one optimiser step and must split "
                f"evenly over {self.world_size} process(es) x grad_accum {self.grad_accum}: use a multiple of "
                f"{self.world_size * self.grad_accum}"
            )
        if self.size < self.batch_size:
            raise InvalidInputError(
                f"{self.size} training samples are too few for train.batch_size={self.batch_size}: lower the "
                "batch size or add data"
            )

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.world_size * self.grad_accum)

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches this process sees per epoch."""
        return (self.size // self.batch_size) * self.grad_accum

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The micro-batches of sample indices this process sees in ``epoch``, in order."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        steps = self.size // self.batch_size
        order = torch.randperm(self.size, generator=generator)[: steps * self.batch_size]
        shares = order.view(steps, self.world_size, self.grad_accum, self.micro_batch_size)
        return shares[:, self.rank].reshape(-1, self.micro_batch_size).tolist()
