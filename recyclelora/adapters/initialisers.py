"""The adapter initialisers, each defined once: name, table label, the ranks its layers get, whether its factors
are a function of the pretrained weight alone (so they can be cached), whether its factors depend on the scaling,
and how it computes them.

``rrqr`` is RecycleLoRA (main adapter on the minor RRQR directions, sub adapter on the major ones);
``rrqr-main`` / ``rrqr-sub`` keep one of the two. The single-adapter baselines use one adapter of rank
``rank_main + rank_sub`` in the main slot, so every method trains the same number of parameters.
This module imports no torch: the factor functions import their maths when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from recyclelora.adapters.factors import Factors

#: How ``(rank_main, rank_sub)`` become the layers' ``(main, sub)`` ranks.
RankLayout = Literal["dual", "main", "sub", "single"]
FactorFn = Callable[["torch.Tensor", int, int, float, "torch.Generator | None"], "Factors"]


@dataclass(frozen=True)
class Initialiser:
    """One way to initialise the adapters (see the module docstring)."""

    name: str
    label: str
    layout: RankLayout
    deterministic: bool
    uses_scaling: bool
    factors: FactorFn
    """``(W0, main rank, sub rank, scaling s, generator) -> Factors`` of one weight, at the effective ranks."""
    parallel: bool = False
    """Worth running on worker processes, one matrix each (RRQR's BLAS calls run single-threaded there)."""

    def ranks(self, rank_main: int, rank_sub: int) -> tuple[int, int]:
        """The ``(main, sub)`` ranks of the layers under this initialiser."""
        return {
            "dual": (rank_main, rank_sub),
            "main": (rank_main, 0),
            "sub": (0, rank_sub),
            "single": (rank_main + rank_sub, 0),
        }[self.layout]


def _rrqr(weight: torch.Tensor, rank_main: int, rank_sub: int, scaling: float, generator: object) -> Factors:
    from recyclelora.adapters.factors import rrqr_factors

    return rrqr_factors(weight, rank_main, rank_sub)


def _svd(minor: bool) -> FactorFn:
    def factors(weight: torch.Tensor, rank: int, _: int, scaling: float, generator: object) -> Factors:
        from recyclelora.adapters.factors import svd_factors

        return svd_factors(weight, rank, scaling, minor=minor)

    return factors


def _random(weight: torch.Tensor, rank: int, _: int, scaling: float, generator: torch.Generator | None) -> Factors:
    from recyclelora.adapters.factors import lora_factors

    return lora_factors(weight, rank, generator=generator)


INITIALISERS: dict[str, Initialiser] = {
    entry.name: entry
    for entry in (
        Initialiser("rrqr", "RecycleLoRA", "dual", True, False, _rrqr, parallel=True),
        Initialiser("rrqr-main", "RecycleLoRA, main only", "main", True, False, _rrqr, parallel=True),
        Initialiser("rrqr-sub", "RecycleLoRA, sub only", "sub", True, False, _rrqr, parallel=True),
        Initialiser("lora", "LoRA", "single", False, False, _random),
        Initialiser("pissa", "PiSSA", "single", True, True, _svd(minor=False)),
        Initialiser("milora", "MiLoRA", "single", True, True, _svd(minor=True)),
    )
}
