"""Paired bootstrap of the mIoU difference between two methods scored on the same images and seeds.

``x[s, i, c]`` is the ``(TP, FP, FN)`` of class ``c`` on image ``i`` for training seed ``s`` (``x`` = ``a`` or
``b``). With image multiplicities ``w`` (``n`` images) and seed multiplicities ``v`` (``S`` seeds), a method
scores ``M(w, v) = 1/S sum_s v_s mIoU(sum_i w_i x[s, i])``, mIoU as in :mod:`recyclelora.eval.metrics` (mean
over the classes with ``TP + FP + FN > 0`` of ``TP / (TP + FP + FN)``). The observed difference is
``M_A(1, 1) - M_B(1, 1)``. Each resample draws ``S`` seeds and ``n`` images uniformly with replacement, the
same draws for both methods, and gives ``M_A(w, v) - M_B(w, v)``; the interval is the percentile interval
``[(1 - confidence) / 2, (1 + confidence) / 2]`` of those differences.

Over several target datasets ``t = 1..T`` (each with its own images, all scored by the same seeds),
:func:`paired_bootstrap_mean` bootstraps ``1/T sum_t (M_A,t - M_B,t)``: each resample draws the seeds once,
shared by every target, and the images of each target within that target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recyclelora.errors import InvalidInputError
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
    return paired_bootstrap_mean([(a, b)], n_resamples=n_resamples, confidence=confidence, seed=seed)


def paired_bootstrap_mean(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> BootstrapInterval:
    """``1/T sum_t (mIoU_t(A) - mIoU_t(B))`` over ``T`` targets, with a paired bootstrap interval.

    ``pairs[t]`` is target ``t``'s ``(a, b)`` as in :func:`paired_bootstrap`; the targets may differ in images
    and classes but share the seeds (axis 0). Each resample draws the images of every target (in order), then
    the seeds, once for all targets; one target gives :func:`paired_bootstrap`'s result.
    """
    if not pairs:
        raise InvalidInputError("no target to compare: pass at least one (a, b) pair")
    pairs = [_checked(np.asarray(a), np.asarray(b)) for a, b in pairs]
    seeds = pairs[0][0].shape[0]
    if any(a.shape[0] != seeds for a, _ in pairs):
        raise InvalidInputError(
            f"the targets' counts have {[a.shape[0] for a, _ in pairs]} seeds: every target must be scored "
            "by the same seeds"
        )
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise InvalidInputError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise InvalidInputError(f"confidence must lie in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    difference = float(np.mean([_miou(a.sum(1)).mean() - _miou(b.sum(1)).mean() for a, b in pairs]))
    image_weights = [
        _multiplicities(rng.integers(0, a.shape[1], (n_resamples, a.shape[1])), a.shape[1]) for a, _ in pairs
    ]
    seed_weights = _multiplicities(rng.integers(0, seeds, (n_resamples, seeds)), seeds)
    differences = np.zeros(n_resamples)
    for (a, b), weights in zip(pairs, image_weights, strict=True):
        _, images, classes, _ = a.shape
        # one matrix product sums the drawn images' counts for every method, seed and class (exact in float64)
        by_image = np.stack([a, b]).astype(np.float64).transpose(2, 0, 1, 3, 4).reshape(images, -1)
        summed = (weights @ by_image).reshape(n_resamples, 2, seeds, classes, 3)
        scores = (_miou(summed) * seed_weights[:, None, :]).sum(-1) / seeds  # (resamples, method)
        differences += (scores[:, 0] - scores[:, 1]) / len(pairs)
    low, high = np.quantile(differences, [(1 - confidence) / 2, (1 + confidence) / 2])
    return BootstrapInterval(difference, float(low), float(high), n_resamples, confidence)


def _checked(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` if they are aligned non-negative ``(seeds, images, classes, 3)`` counts."""
    if a.shape != b.shape:
        raise InvalidInputError(
            f"A's counts have shape {a.shape} but B's {b.shape}: pair them on the same seeds and images"
        )
    if a.ndim != 4 or a.shape[-1] != 3 or 0 in a.shape:
        raise InvalidInputError(
            f"counts must have shape (seeds, images, classes, 3) with no empty axis, got {a.shape}"
        )
    if not ((a >= 0).all() and (b >= 0).all()):
        raise InvalidInputError("counts must be non-negative (TP, FP, FN) pixel counts")
    return a, b
