"""The statistics: each method's mIoU difference to RecycleLoRA per target and for the mean over targets, with
a 95 % paired bootstrap interval over the target images and the seeds (:mod:`recyclelora.eval.bootstrap`), from
the per-image counts of the finished experiments paired on seed, image and class; and the training-budget
curve's points, those scores and differences grouped by the experiments' ``train.iterations``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pipeline.compare.plan import METHODS, REFERENCE, STEPS_KEY
from pipeline.compare.results import (
    IMAGE_TABLE,
    ImageCounts,
    Reader,
    collect,
    finished,
    image_counts,
    method_of,
    read_dvc,
)
from recyclelora.errors import InvalidInputError
from recyclelora.eval.bootstrap import BootstrapInterval, paired_bootstrap, paired_bootstrap_mean


def paired_counts(
    method: str,
    runs: Mapping[int, Mapping[str, ImageCounts]],
    reference: Mapping[int, Mapping[str, ImageCounts]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{target: (method's, RecycleLoRA's) (seeds, images, classes, 3) counts}`` joined on seed, image and
    class (ascending); a ``ValueError`` unless every run covers the same seeds, targets, images and classes."""
    seeds = sorted(reference)
    if sorted(runs) != seeds:
        raise InvalidInputError(
            f"{method} has finished experiments for seeds {sorted(runs)} but {REFERENCE} for {seeds}: the "
            "paired bootstrap needs the same seeds"
        )
    expected = {target: counts[:2] for target, counts in reference[seeds[0]].items()}
    for name, per_seed in ((method, runs), (REFERENCE, reference)):
        for seed in seeds:
            found = {target: counts[:2] for target, counts in per_seed[seed].items()}
            if found != expected:
                raise InvalidInputError(
                    f"{name} (seed {seed}) was evaluated on other targets, images or classes than {REFERENCE} "
                    f"(seed {seeds[0]}): {_mismatch(expected, found)}; compare experiments evaluated on the "
                    "same data"
                )
    return {
        target: (
            np.stack([runs[seed][target].counts for seed in seeds]),
            np.stack([reference[seed][target].counts for seed in seeds]),
        )
        for target in sorted(expected)
    }


def _mismatch(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> str:
    """The first difference between two ``{target: (images, classes)}``."""
    if set(found) != set(expected):
        return f"targets {sorted(found)} instead of {sorted(expected)}"
    target = next(target for target in sorted(expected) if found[target] != expected[target])
    (images, classes), (want_images, want_classes) = found[target], expected[target]
    if classes != want_classes:
        return f"{target} has classes {list(classes)} instead of {list(want_classes)}"
    missing, extra = sorted(set(want_images) - set(images)), sorted(set(images) - set(want_images))
    return f"{target} lacks images {missing[:3]} and has other images {extra[:3]}"


def compare_to_reference(
    rows: Sequence[Mapping[str, Any]], read: Reader = read_dvc
) -> dict[str, dict[str, BootstrapInterval]]:
    """``{method: {target or "mean": mIoU(method) - mIoU(RecycleLoRA)}}`` with 95 % paired bootstrap intervals.

    Each finished experiment's ``per_image.parquet`` is read with ``read(IMAGE_TABLE, row["rev"])`` (its
    commit) and paired with RecycleLoRA's of the same ``base.seed`` on (dataset, image, class_id). A target's
    difference is :func:`~recyclelora.eval.bootstrap.paired_bootstrap` over its images and the seeds; ``mean``
    is :func:`~recyclelora.eval.bootstrap.paired_bootstrap_mean`, the mean over targets of the differences,
    each resample drawing the images within each target and the seeds once for all targets (bootstrap seed
    0, 2000 resamples). Empty without a finished RecycleLoRA experiment.
    """
    done = finished(rows)
    if not any(method_of(row) == REFERENCE for row in done):
        return {}
    runs: dict[str, dict[int, dict[str, ImageCounts]]] = {}
    for row in done:
        per_seed = runs.setdefault(method_of(row), {})
        seed = int(row["base.seed"])
        if seed in per_seed:
            raise InvalidInputError(
                f"two finished {method_of(row)} experiments have seed {seed} ({row['Experiment']}): remove one"
            )
        per_seed[seed] = image_counts(read(IMAGE_TABLE, row["rev"]))
    differences = {}
    for method in (m for m in METHODS if m in runs and m != REFERENCE):
        pairs = paired_counts(method, runs[method], runs[REFERENCE])
        differences[method] = {target: paired_bootstrap(*pair) for target, pair in pairs.items()}
        differences[method]["mean"] = paired_bootstrap_mean(list(pairs.values()))
    return differences


class CurvePoint(NamedTuple):
    """One training budget of the curve: its finished experiments' :func:`collect` scores and
    :func:`compare_to_reference` differences."""

    scores: dict[str, dict[str, list[float]]]
    differences: dict[str, dict[str, BootstrapInterval]]


def curve_points(rows: Sequence[Mapping[str, Any]], read: Reader = read_dvc) -> dict[int, CurvePoint]:
    """``{steps: point}`` by increasing steps: the finished experiments grouped by their ``train.iterations``
    param (not their names)."""
    budgets: dict[int, list[Mapping[str, Any]]] = {}
    for row in finished(rows):
        budgets.setdefault(int(row[STEPS_KEY]), []).append(row)
    return {
        steps: CurvePoint(collect(group), compare_to_reference(group, read))
        for steps, group in sorted(budgets.items())
    }
