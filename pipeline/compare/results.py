"""Collecting the experiments' results: the rows of ``dvc exp show`` (experiments found by name prefix, their
state, method and flattened metrics gathered per method) and each experiment's per-image counts
(``reports/eval/per_image.parquet``) read from the DVC cache at the experiment's commit. It knows DVC's output
formats, not what is compared or how."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import dvc.api
import numpy as np
import pyarrow.parquet as pq

from recyclelora.errors import InvalidInputError

#: Keys of ``metrics/eval.json`` in a ``dvc exp show`` row: ``<target>.mIoU`` per target and their mean.
MIOU_SUFFIX = ".mIoU"
MEAN_KEY = "mean_mIoU"
#: Keys of ``metrics/train.json``: the run's trainable parameters (adapters or backbone, neck, head) and its
#: training wall time in seconds.
PARAMS_KEY = "trainable_parameters/total"
SECONDS_KEY = "seconds"
#: Keys of ``metrics/analysis.json`` (means over the adapted layers; absent without adapters).
ANALYSIS_KEYS = ("efficiency_main", "efficiency_sub", "grassmann_distance")
#: Names in :func:`collect`'s output that are not target domains.
NOT_TARGETS = frozenset({"mean", "params", "seconds", *ANALYSIS_KEYS})
#: The evaluate stage's per-image counts.
IMAGE_TABLE = "reports/eval/per_image.parquet"
PENDING_STATES = frozenset({"Queued", "Running"})
#: ``State`` of a finished experiment: ``Success`` while its queue entry lasts, then none.
FINISHED_STATES = frozenset({"Success", None})


def method_of(row: Mapping[str, Any]) -> str:
    """The method of a ``dvc exp show`` row (flat params): ``frozen``, ``full`` or the adapters' initialiser."""
    tuning = row["model.tuning"]
    return tuning if tuning != "adapters" else row["model.adapter.init"]


def _named(pattern: str, rev: str) -> list[dict[str, Any]]:
    """``dvc exp show`` rows based on Git revision ``rev`` whose experiment name starts with regex ``pattern``."""
    start = re.compile(pattern)
    return [row for row in dvc.api.exp_show(revs=rev) if start.match(row.get("Experiment") or "")]


def experiments(prefix: str, rev: str = "HEAD") -> list[dict[str, Any]]:
    """``dvc exp show`` rows of the experiments named ``<prefix>-...`` based on Git revision ``rev``."""
    return _named(f"{re.escape(prefix)}-", rev)


def curve_experiments(prefix: str, rev: str = "HEAD") -> list[dict[str, Any]]:
    """``dvc exp show`` rows of the experiments named ``<prefix><steps>-...`` based on Git revision ``rev``."""
    return _named(rf"{re.escape(prefix)}\d+-", rev)


def finished(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of finished experiments (not queued, running or failed)."""
    return [row for row in rows if row.get("State") in FINISHED_STATES]


def collect(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{method: {target, "mean", "params", "seconds" or analysis key: [value of each finished experiment]}}``
    from ``dvc exp show``.

    A row holds its params and metrics flattened: ``<target>.mIoU`` and ``mean_mIoU`` come from
    ``metrics/eval.json`` (the only metrics file with such keys), targets losing their ``_val`` suffix;
    ``params`` and ``seconds`` are the trainable parameter count and training time of ``metrics/train.json``;
    :data:`ANALYSIS_KEYS` come from ``metrics/analysis.json``.
    """
    scores: dict[str, dict[str, list[float]]] = {}
    for row in finished(rows):
        per_method = scores.setdefault(method_of(row), {})
        for key, value in row.items():
            if key in (MEAN_KEY, PARAMS_KEY, SECONDS_KEY, *ANALYSIS_KEYS):
                name = {MEAN_KEY: "mean", PARAMS_KEY: "params", SECONDS_KEY: "seconds"}.get(key, key)
            elif key.endswith(MIOU_SUFFIX):
                name = key.removesuffix(MIOU_SUFFIX).removesuffix("_val")
            else:
                continue
            if isinstance(value, (int, float)):  # not None, nor "None": dvc exp show's rendering of a null
                per_method.setdefault(name, []).append(float(value))
    return scores


class ImageCounts(NamedTuple):
    """One target of a ``per_image.parquet``: its images and class ids (sorted) and their counts."""

    images: tuple[str, ...]
    classes: tuple[int, ...]
    counts: np.ndarray  # (images, classes, 3): TP, FP, FN


#: ``read(path, rev)``: the bytes of a DVC-tracked file at a Git revision.
Reader = Callable[[str, str], bytes]


def read_dvc(path: str, rev: str) -> bytes:
    """DVC-tracked ``path`` at Git revision ``rev`` (an experiment's commit), from the DVC cache."""
    return dvc.api.read(path, rev=rev, mode="rb")


def image_counts(data: bytes) -> dict[str, ImageCounts]:
    """``{target: counts}`` of a ``per_image.parquet`` (targets lose their ``_val`` suffix); a target must have
    exactly one row per image and class."""
    table = pq.read_table(io.BytesIO(data))
    columns = {name: np.asarray(values) for name, values in table.to_pydict().items()}
    targets = {}
    for dataset in sorted(set(columns["dataset"])):
        rows = columns["dataset"] == dataset
        images, image_index = np.unique(columns["image"][rows], return_inverse=True)
        classes, class_index = np.unique(columns["class_id"][rows], return_inverse=True)
        cells = image_index * len(classes) + class_index
        if rows.sum() != len(images) * len(classes) or len(np.unique(cells)) != rows.sum():
            raise InvalidInputError(
                f"{IMAGE_TABLE}: {dataset} does not have exactly one row per image and class"
            )
        counts = np.zeros((len(images), len(classes), 3), np.int64)
        counts[image_index, class_index] = np.stack([columns[key][rows] for key in ("tp", "fp", "fn")], -1)
        targets[dataset.removesuffix("_val")] = ImageCounts(
            tuple(images.tolist()), tuple(classes.tolist()), counts
        )
    return targets
