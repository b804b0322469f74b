"""Check manifests up front: every image and label decodes fully, their sizes agree, label ids are class ids of
the manifest's class set.

:func:`check_manifest` reads every sample of a manifest (a truncated JPEG or PNG fails, as in training: the
check decodes with :func:`~recyclelora.data.dataset.load_pair`, so a 16-bit, rotated or oversized file is read
or refused as training reads it) on a thread pool (Pillow decodes without the GIL) and reports all bad
samples. :func:`ensure_checked` skips a manifest whose check already passed: a pass is recorded as
``<cache>/<key>.json``, the key being the SHA-256 of :data:`CHECK_VERSION`, the manifest's resolved path (its
relative paths resolve against its folder) and its bytes. That hash does not cover the images and labels: the
cache trusts that they are unchanged since the check passed, as DVC trusts its own hash of ``data/prepared``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from recyclelora.data.classes import IGNORE_INDEX, NUM_CLASSES
from recyclelora.data.dataset import load_pair
from recyclelora.data.manifest import Sample, read_classes, read_manifest
from recyclelora.data.pixel_limits import DEFAULT_MAX_PIXELS, check_max_pixels
from recyclelora.data.prepare import default_workers
from recyclelora.errors import InvalidInputError
from recyclelora.io import atomic_write_text, default_cache_dir, sha256_bytes, sha256_file

PathLike = str | os.PathLike[str]

#: Bump when the check finds more: earlier passes are then checked again (2: modes, orientation, size limit;
#: 3: ids against the manifest's own class set).
CHECK_VERSION = 3
#: Bad samples a summary lists; the rest are counted.
MAX_LISTED = 20


class DataCheckError(InvalidInputError):
    """Some manifests hold bad samples; the message has one line per such manifest."""


@dataclass(frozen=True)
class BadSample:
    """A sample that failed the check: its 0-based row in the manifest and what is wrong with it."""

    row: int
    sample: Sample
    problem: str


@dataclass(frozen=True)
class CheckReport:
    """The check of one manifest: its path, SHA-256 as read, sample count and bad samples (in row order)."""

    manifest: Path
    manifest_sha256: str
    samples: int
    bad: tuple[BadSample, ...]

    @property
    def ok(self) -> bool:
        """True when no sample is bad."""
        return not self.bad

    def summary(self) -> str:
        """One line: ``data check: 3 of 500 samples of X.parquet are bad: row 4: ...`` (at most
        :data:`MAX_LISTED` listed)."""
        if self.ok:
            return f"data check: the {self.samples} samples of {self.manifest} are good"
        listed = "; ".join(f"row {bad.row}: {' '.join(bad.problem.split())}" for bad in self.bad[:MAX_LISTED])
        more = len(self.bad) - MAX_LISTED
        return (
            f"data check: {len(self.bad)} of {self.samples} samples of {self.manifest} are bad: {listed}"
            + (f"; and {more} more" if more > 0 else "")
        )


def default_check_cache() -> Path:
    """``<recyclelora cache>/data-check``: where passed checks are recorded unless told otherwise."""
    return default_cache_dir() / "data-check"


def check_sample(
    sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS, num_classes: int = NUM_CLASSES
) -> str | None:
    """What is wrong with ``sample`` (None: nothing): a file that cannot be read (see
    :func:`~recyclelora.data.dataset.load_pair`), image and label sizes that differ, or label ids outside
    ``0..num_classes-1`` and the ignore index."""
    try:
        _, label = load_pair(sample, max_pixels)
    except InvalidInputError as error:
        return str(error)
    counts = np.bincount(label.ravel(), minlength=256)
    invalid = [int(v) for v in np.flatnonzero(counts) if v >= num_classes and v != IGNORE_INDEX]
    if not invalid:
        return None
    return (
        f"label {sample.label} holds ids {invalid} ({int(counts[invalid].sum())} pixels) outside "
        f"0..{num_classes - 1} and the ignore index {IGNORE_INDEX}: prepare the dataset again"
    )


def check_manifest(
    path: PathLike, *, workers: int | None = None, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> CheckReport:
    """Check every sample of the manifest ``path`` on ``workers`` threads (default: all usable CPUs); a file
    above ``max_pixels`` is a bad sample.

    Raises ``FileNotFoundError`` / ``ValueError`` for a missing or invalid manifest (see
    :func:`~recyclelora.data.manifest.read_manifest`); bad samples are reported, not raised.
    """
    if workers is not None and workers < 1:
        raise InvalidInputError(f"workers={workers} must be at least 1 (or None for all CPUs)")
    check_max_pixels(max_pixels)
    path = Path(path)
    digest = sha256_file(path) if path.is_file() else ""  # hashed first: the bytes then checked
    samples = read_manifest(path)  # explains a missing or invalid manifest
    num_classes = len(read_classes(path))
    columns = (
        TextColumn("check {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    bad = []
    with (
        Progress(*columns, disable=not progress) as bar,
        ThreadPoolExecutor(workers or default_workers()) as pool,
    ):
        task = bar.add_task(path.name, total=len(samples))
        for row, (sample, problem) in enumerate(
            zip(samples, pool.map(functools.partial(check_sample, max_pixels=max_pixels, num_classes=num_classes), samples))
        ):
            bar.advance(task)
            if problem is not None:
                bad.append(BadSample(row, sample, problem))
    return CheckReport(path, digest, len(samples), tuple(bad))


def cache_file(manifest: PathLike, manifest_sha256: str, cache_dir: PathLike) -> Path:
    """Where a passed check of ``manifest`` with these bytes is recorded."""
    key = [CHECK_VERSION, str(Path(manifest).resolve()), manifest_sha256]
    return Path(cache_dir) / f"{sha256_bytes(json.dumps(key).encode())}.json"


def record_pass(report: CheckReport, cache_dir: PathLike) -> Path:
    """Record the passed check ``report`` in ``cache_dir`` (atomically); return the record's path."""
    if not report.ok:
        raise InvalidInputError(f"the check of {report.manifest} did not pass: {report.summary()}")
    record = {
        "check_version": CHECK_VERSION,
        "manifest": str(report.manifest.resolve()),
        "manifest_sha256": report.manifest_sha256,
        "samples": report.samples,
    }
    path = cache_file(report.manifest, report.manifest_sha256, cache_dir)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def raise_if_bad(reports: Iterable[CheckReport]) -> None:
    """Raise :class:`DataCheckError` with the summary of every report that did not pass."""
    failed = [report.summary() for report in reports if not report.ok]
    if failed:
        raise DataCheckError("\n".join(failed))


def ensure_checked(
    paths: Iterable[PathLike],
    cache_dir: PathLike | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[CheckReport, ...]:
    """Check each manifest of ``paths`` (files up to ``max_pixels``) unless a pass of its current bytes is
    recorded in ``cache_dir`` (default :func:`default_check_cache`), record the new passes, and return the
    reports of the manifests checked. Raises :class:`DataCheckError` naming the bad samples (:data:`MAX_LISTED`
    per manifest) once all are checked."""
    cache = Path(cache_dir) if cache_dir is not None else default_check_cache()
    reports = []
    for path in dict.fromkeys(Path(p) for p in paths):
        if path.is_file() and cache_file(path, sha256_file(path), cache).is_file():
            continue
        report = check_manifest(path, workers=workers, progress=progress, max_pixels=max_pixels)
        if report.ok:
            record_pass(report, cache)
        reports.append(report)
    raise_if_bad(reports)
    return tuple(reports)
