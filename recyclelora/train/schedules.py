"""Per-iteration schedules of the recipe: poly learning rate and cosine-annealed weight decay.

Both are the closed forms of mmengine's chainable ``PolyLR(eta_min=0, end=total)`` and
``CosineAnnealingParamScheduler(end=total)`` that the published configs use, at the step about to be taken.
"""

from __future__ import annotations

import math


def poly_factor(step: int, total: int, power: float = 0.9) -> float:
    """``(1 - step / (total - 1)) ** power``: the learning-rate multiplier at ``step`` of ``total`` (no warm-up).

    mmengine's PolyLR runs over ``total - 1`` decays, so the last step (``total - 1``) has learning rate 0.
    """
    if total <= 1:
        return 1.0
    return max(0.0, 1.0 - step / (total - 1)) ** power


def cosine_value(step: int, total: int, start: float, end: float) -> float:
    """``end + (start - end) (1 + cos(pi step / total)) / 2``: cosine annealing from ``start`` to ``end``."""
    progress = min(max(step / total, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
