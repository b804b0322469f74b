"""The adapter initialisers, each defined once: name, table label, the ranks its layers get, whether its factors
are a function of the pretrained weight alone (so they can be cached), whether its factors depend on the scaling,
and how it computes them.

``rrqr`` is RecycleLoRA (main adapter on the minor RRQR directions, sub adapter on the major ones);
``rrqr-main`` / ``rrqr-sub`` keep one of the two. The single-adapter baselines use one adapter of rank
``rank_main + rank_sub`` in the main slot, so every method trains the same number of parameters.
This module imports no torch: :func:`recyclelora.adapters.init.layer_factors` computes what each rule names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: How ``(rank_main, rank_sub)`` become the layers' ``(main, sub)`` ranks.
RankLayout = Literal["dual", "main", "sub", "single"]
#: Which factors a layer starts from (:func:`recyclelora.adapters.init.layer_factors` computes them): RRQR of
#: ``W0``, its top or bottom singular triplets, or LoRA's random ``A`` with ``B = 0``.
FactorRule = Literal["rrqr", "svd_major", "svd_minor", "random"]


@dataclass(frozen=True)
class Initialiser:
    """One way to initialise the adapters (see the module docstring)."""

    name: str
    label: str
    layout: RankLayout
    deterministic: bool
    uses_scaling: bool
    rule: FactorRule
    """How the factors of one weight are computed, at the effective ranks."""
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


INITIALISERS: dict[str, Initialiser] = {
    entry.name: entry
    for entry in (
        Initialiser("rrqr", "RecycleLoRA", "dual", True, False, "rrqr", parallel=True),
        Initialiser("rrqr-main", "RecycleLoRA, main only", "main", True, False, "rrqr", parallel=True),
        Initialiser("rrqr-sub", "RecycleLoRA, sub only", "sub", True, False, "rrqr", parallel=True),
        Initialiser("lora", "LoRA", "single", False, False, "random"),
        Initialiser("pissa", "PiSSA", "single", True, True, "svd_major"),
        Initialiser("milora", "MiLoRA", "single", True, True, "svd_minor"),
    )
}
