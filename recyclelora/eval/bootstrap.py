"""Paired bootstrap of the mIoU difference between two methods scored on the same images and seeds.

``x[s, i, c]`` is the ``(TP, FP, FN)`` of class ``c`` on image ``i`` for training seed ``s`` (``x`` = ``a`` or
``b``). With image multiplicities ``w`` (``n`` images) and seed multiplicities ``v`` (``S`` seeds), a method
scores ``M(w, v) = 1/S sum_s v_s mIoU(sum_i w_i x[s, i])``, mIoU as in :mod:`recyclelora.eval.metrics` (mean
over the classes with ``TP + FP + FN > 0`` of ``TP / (TP + FP + FN)``). The observed difference is
``M_A(1, 1) - M_B(1, 1)``. Each resample draws ``S`` seeds and ``n`` images uniformly with replacement, the
same draws for both methods, and gives ``M_A(w, v) - M_B(w, v)``; the interval is the percentile interval
``[(1 - confidence) / 2, (1 + confidence) / 2]`` of those differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recyclelora.eval.metrics import iou_from_counts


@dataclass(frozen=True)
class BootstrapInterval:
    """Observed mIoU difference (A - B, a fraction) and its percentile bootstrap interval."""

    difference: float
    low: float
    high: float
    n_resamples: int
    confidence: float


def _miou(counts: np.ndarray) -> np.ndarray:
    """mIoU of ``(..., C, 3)`` summed counts, over the last-but-one axis."""
    return np.nanmean(iou_from_counts(counts[..., 0], counts[..., 1], counts[..., 2]), axis=-1)


def _multiplicities(draws: np.ndarray, size: int) -> np.ndarray:
    """``(R, size)`` counts of each index in ``[0, size)`` in each row of the ``(R, k)`` ``draws``."""
    rows = draws.shape[0]
    offsets = draws + size * np.arange(rows)[:, None]
    return np.bincount(offsets.ravel(), minlength=rows * size).reshape(rows, size)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> BootstrapInterval:
    """``mIoU(A) - mIoU(B)`` (means over seeds) with a paired bootstrap interval over seeds and images.

    ``a`` and ``b``: ``(seeds, images, classes, 3)`` non-negative ``(TP, FP, FN)`` counts, aligned on seeds
    and images. ``seed`` seeds :func:`numpy.random.default_rng` (or is the generator), for reproducibility.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(
            f"A's counts have shape {a.shape} but B's {b.shape}: pair them on the same seeds and images"
        )
    if a.ndim != 4 or a.shape[-1] != 3 or 0 in a.shape:
        raise ValueError(
            f"counts must have shape (seeds, images, classes, 3) with no empty axis, got {a.shape}"
        )
    if not ((a >= 0).all() and (b >= 0).all()):
        raise ValueError("counts must be non-negative (TP, FP, FN) pixel counts")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    seeds, images, classes, _ = a.shape
    rng = np.random.default_rng(seed)
    difference = float(_miou(a.sum(1)).mean() - _miou(b.sum(1)).mean())
    image_weights = _multiplicities(rng.integers(0, images, (n_resamples, images)), images)
    seed_weights = _multiplicities(rng.integers(0, seeds, (n_resamples, seeds)), seeds)
    # one matrix product sums the drawn images' counts for every method, seed and class (exact in float64)
    by_image = np.stack([a, b]).astype(np.float64).transpose(2, 0, 1, 3, 4).reshape(images, -1)
    summed = (image_weights @ by_image).reshape(n_resamples, 2, seeds, classes, 3)
    scores = (_miou(summed) * seed_weights[:, None, :]).sum(-1) / seeds  # (resamples, method)
    low, high = np.quantile(scores[:, 0] - scores[:, 1], [(1 - confidence) / 2, (1 + confidence) / 2])
    return BootstrapInterval(difference, float(low), float(high), n_resamples, confidence)
