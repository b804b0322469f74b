"""A seeded, sharded, resumable batch order for iteration-based training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchOrder:
    """The micro-batches one process sees: epoch ``e`` shuffles ``range(size)`` with seed ``seed + e``,
    drops the tail that does not split evenly over ``world_size`` processes, gives process ``rank`` every
    ``world_size``-th sample and cuts its share into batches of ``batch_size`` (the last partial batch is
    dropped). Micro-batch ``m`` is therefore a pure function of ``(seed, m)``, so a run resumed at any
    step sees exactly the batches an uninterrupted run would have.
    """

    size: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{self.size} training samples are too few for batch_size {self.batch_size} on "
                f"{self.world_size} process(es): lower the batch size or add data"
            )

    @property
    def batches_per_epoch(self) -> int:
        return (self.size // self.world_size) // self.batch_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of sample indices this process sees in ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=generator)
        share = order[: (self.size // self.world_size) * self.world_size][self.rank :: self.world_size]
        count = self.batches_per_epoch
        return share[: count * self.batch_size].view(count, self.batch_size).tolist()

    def iterate(self, start: int = 0) -> Iterator[tuple[int, list[int]]]:
        """``(epoch, batch)`` from micro-batch ``start`` on, forever."""
        epoch, offset = divmod(start, self.batches_per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[offset:]:
                yield epoch, batch
            epoch, offset = epoch + 1, 0
