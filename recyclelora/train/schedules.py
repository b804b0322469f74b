"""Per-iteration schedules of the recipe: poly learning rate and cosine-annealed weight decay."""

from __future__ import annotations

import math


def poly_factor(step: int, total: int, power: float = 0.9) -> float:
    """``(1 - step / total) ** power``: the learning-rate multiplier at ``step`` (0 at the end, no warm-up)."""
    return max(0.0, 1.0 - step / total) ** power


def cosine_value(step: int, total: int, start: float, end: float) -> float:
    """``end + (start - end) (1 + cos(pi step / total)) / 2``: cosine annealing from ``start`` to ``end``."""
    progress = min(max(step / total, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
