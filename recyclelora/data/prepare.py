"""Raw dataset -> trainId label PNGs + one Parquet manifest per split + a bad-data report.

For each image/label pair: decode both, check sizes and label values, map the label through the dataset's
lookup table (:mod:`recyclelora.data.labelmaps`) and write it as an 8-bit PNG to
``<out>/labels/<dataset>/<split>/<key>.png``. A pair that does not decode, whose label size differs from its
image's, or whose label holds a value the dataset does not define is skipped and reported. GTAV is the
exception for values: as in the published conversion (Rein's ``tools/convert_datasets/gta.py``), a value
outside the Cityscapes id table becomes 255 and the frame is kept; the report counts such frames, pixels and
values, and the label PNG records them in a text chunk (``recyclelora:ignored_values``) so that a rerun
reusing it counts them again.

Manifest rows point at the raw image (absolute path) and the new label (relative to ``<out>``). Mapillary
validation pairs are stored halved, as Rein's ``tools/convert_datasets/mapillary_resize.py`` stores them for
the published evaluation: size ``(width // 2, height // 2)``, Pillow bicubic for the image, Pillow nearest for
the label; the halved image goes to ``<out>/images/mapillary/val/<key>.jpg``, re-encoded with Pillow's default
JPEG settings (quality 75, 4:2:0 chroma) as published, or losslessly to ``<key>.png``
(``mapillary_val_format="png"``).
Images and labels are read by :mod:`recyclelora.data.images` (16-bit and other modes, size limit). A label is
written on its raw image's stored pixel grid, which readers turn upright with the image by its EXIF
orientation; a halved image is written upright, and so is its label.
Each label PNG also records the SHA-256 of the raw image and raw label it was made from (text chunk
``recyclelora:sources``). A rerun reuses a pair when its label PNG still has the checksum the previous manifest
recorded and was made from the same raw bytes: a raw file replaced or edited is converted again, whatever its
modification time (an older one comes with an unpacked archive, ``cp -p`` or ``rsync -a``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from recyclelora.data.classes import CITYSCAPES_CLASSES
from recyclelora.data.custom import UnknownColourError, custom_label_map, custom_raw_dataset
from recyclelora.data.custom_config import CustomDatasetConfig, check_custom_name
from recyclelora.data.images import exif_transpose_of, open_image, orient, rgb_pixels
from recyclelora.data.labelmaps import LabelMap, load_label_map
from recyclelora.data.manifest import (
    LABEL_MAP_KEY,
    Sample,
    manifest_path,
    read_manifest,
    read_metadata,
    write_manifest,
)
from recyclelora.data.raw import RAW_DATASETS, RawDataset
from recyclelora.data.report import BadDataLog, BadFile, IgnoredValues, Problem
from recyclelora.errors import InvalidInputError
from recyclelora.io import atomic_path, atomic_write_bytes, sha256_bytes, sha256_file
from recyclelora.validation import validate_fields

_DECODE_ERRORS = (OSError, ValueError)  # ImageFileError is a ValueError; OpenCV raises OSError

#: How the halved Mapillary validation image is stored: option value -> (Pillow format, save options, suffix).
#: ``jpeg`` is the published preprocessing (Pillow's ``save`` defaults, spelled out); ``png`` is lossless.
MAPILLARY_VAL_FORMATS: dict[str, tuple[str, dict[str, object], str]] = {
    "jpeg": ("JPEG", {"quality": 75, "subsampling": "4:2:0"}, ".jpg"),
    "png": ("PNG", {}, ".png"),
}

#: Text chunk of a trainId label PNG holding ``{raw value: pixels}`` of the values that were written as 255.
IGNORED_VALUES_KEY = "recyclelora:ignored_values"
#: Label PNG text chunk: ``{"image": sha256, "label": sha256}`` of the raw pair the label was made from.
SOURCES_KEY = "recyclelora:sources"


def default_workers() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class PrepareConfig:
    """What to prepare: ``dataset`` from ``raw`` into ``out``, one ``split`` or all (None); ``custom`` describes
    a dataset of your own named ``dataset`` (:mod:`recyclelora.data.custom`)."""

    dataset: str
    raw: Path
    out: Path
    split: str | None = None
    workers: int | None = field(default=None, metadata={"ge": 1})
    strict: bool = False
    halve_mapillary_val: bool = True
    mapillary_val_format: str = "jpeg"
    custom: CustomDatasetConfig | None = None

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.custom is not None:
            check_custom_name(self.dataset)
        elif self.dataset not in RAW_DATASETS:
            raise InvalidInputError(
                f"dataset={self.dataset!r} is unknown: choose one of {list(RAW_DATASETS)}, or describe your own "
                "(--custom)"
            )
        splits = self.spec.splits
        if self.split is not None and self.split not in splits:
            raise InvalidInputError(
                f"split={self.split!r} does not exist for {self.dataset}: choose one of {list(splits)}"
            )
        if self.mapillary_val_format not in MAPILLARY_VAL_FORMATS:
            raise InvalidInputError(
                f"mapillary_val_format={self.mapillary_val_format!r} is unknown: choose one of "
                f"{list(MAPILLARY_VAL_FORMATS)} (jpeg = as published, png = lossless)"
            )
        if not Path(self.raw).is_dir():
            raise FileNotFoundError(
                f"raw={self.raw} is not a folder: point it at the unpacked {self.dataset} download, laid out as\n"
                f"{self.spec.layout()}\nGet it from {self.spec.source}."
            )

    @property
    def spec(self) -> RawDataset:
        """How the dataset lies on disk."""
        return custom_raw_dataset(self.custom, self.dataset) if self.custom else RAW_DATASETS[self.dataset]


@dataclass(frozen=True)
class SplitResult:
    """One prepared split: its manifest, how many pairs were converted, reused and skipped, and how many kept
    frames had label values outside the table written as 255 (``ignored``)."""

    split: str
    manifest: Path
    converted: int
    reused: int
    skipped: int
    ignored: int = 0


@dataclass(frozen=True)
class PrepareResult:
    splits: list[SplitResult]
    report: Path
    bad: BadDataLog


@dataclass(frozen=True)
class _Job:
    """One image/label pair to convert; ``*_entry`` are the manifest's path strings. A halved pair (both
    ``image_out`` and ``image_format`` set) writes its image to ``image_out`` in ``image_format``, a key of
    :data:`MAPILLARY_VAL_FORMATS`."""

    dataset: str
    split: str
    image: Path
    label: Path
    label_out: Path
    image_out: Path | None
    image_format: str | None
    image_entry: str
    label_entry: str
    label_map: LabelMap
    read_label: Callable[[Path], np.ndarray]
    previous: Sample | None


class _Converted(NamedTuple):
    """A usable pair: its manifest row, whether the previous outputs were reused, and its label values outside
    the table that were written as 255 (None when there were none)."""

    row: dict
    reused: bool
    ignored: IgnoredValues | None


def prepare_dataset(
    name: str,
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str | None = None,
    workers: int | None = None,
    strict: bool = False,
    halve_mapillary_val: bool = True,
    mapillary_val_format: str = "jpeg",
    custom: CustomDatasetConfig | None = None,
) -> PrepareResult:
    """Prepare ``name`` from ``raw`` into ``out`` and write ``<out>/<name>_report.json``.

    ``halve_mapillary_val`` stores Mapillary's validation pairs halved, the image as ``mapillary_val_format``
    (``jpeg``: as published, ``png``: lossless). ``custom`` describes a dataset of your own (its files, classes
    and label map; ``raw`` is its root). Raises ``FileNotFoundError`` for a wrong layout,
    :class:`~recyclelora.data.report.BadDataError` on the first bad file when ``strict``, and ``ValueError``
    when a split ends up with no usable pair.
    """
    config = PrepareConfig(
        name, Path(raw), Path(out), split, workers, strict, halve_mapillary_val, mapillary_val_format, custom
    )
    spec = config.spec
    raw, out = config.raw.resolve(), config.out.resolve()
    splits = [config.split] if config.split else list(spec.splits)
    for s in splits:
        spec.check_layout(raw, s)
    label_map = custom_label_map(custom, name) if custom else load_label_map(name, raw)
    classes = custom.class_set() if custom else CITYSCAPES_CLASSES
    bad = BadDataLog(name, strict=config.strict)
    results = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    ) as progress:
        for s in splits:
            halve = name == "mapillary" and s == "val" and config.halve_mapillary_val
            image_format = config.mapillary_val_format if halve else None
            jobs = _jobs(spec, s, raw, out, label_map, image_format, bad)
            task = progress.add_task(f"{name}/{s}", total=len(jobs))
            rows, reused, ignored = [], 0, 0
            with contextlib.closing(_run(jobs, config.workers or default_workers())) as outcomes:
                for outcome in outcomes:
                    progress.advance(task)
                    if isinstance(outcome, BadFile):
                        bad.add(outcome)
                        continue
                    rows.append(outcome.row)
                    reused += outcome.reused
                    if outcome.ignored is not None:
                        bad.add_ignored(outcome.ignored)
                        ignored += 1
            path = manifest_path(out, name, s)
            if rows:
                write_manifest(path, rows, classes, {LABEL_MAP_KEY: label_map.digest()})
            else:  # an earlier manifest of this split would describe data that is no longer usable
                path.unlink(missing_ok=True)
            skipped = sum(r.split == s for r in bad.records)
            results.append(SplitResult(s, path, len(rows) - reused, reused, skipped, ignored))
    report = bad.write(out / f"{name}_report.json", {r.split: r.converted + r.reused for r in results})
    empty = [r.split for r in results if r.converted + r.reused == 0]
    if empty:
        raise InvalidInputError(f"{name}: no usable image/label pair in split(s) {empty}; see {report}")
    return PrepareResult(results, report, bad)


def _jobs(
    spec: RawDataset,
    split: str,
    raw: Path,
    out: Path,
    label_map: LabelMap,
    halved_format: str | None,
    bad: BadDataLog,
) -> list[_Job]:
    """Pair images with labels by key; an unpaired file goes to ``bad``. With ``halved_format`` (a key of
    :data:`MAPILLARY_VAL_FORMATS`) the pairs are halved and their images written below ``out``."""
    raw_split = spec.splits[split]
    image_files, label_files = spec.files(split)
    images = image_files.collect(raw, raw_split)
    labels = label_files.collect(raw, raw_split)
    if not images and not labels:
        raise FileNotFoundError(
            f"{spec.name}/{split}: no files match <raw>/{image_files.describe(raw_split)} or "
            f"<raw>/{label_files.describe(raw_split)} in {raw}. Get the dataset from {spec.source}."
        )
    unpaired = (("image", images, labels, label_files), ("label", labels, images, image_files))
    for kind, files, partners, partner_set in unpaired:
        for key in sorted(files.keys() - partners.keys()):
            detail = f"{kind} without partner: no <raw>/{partner_set.describe(raw_split)} with key {key!r}"
            bad.add(BadFile(spec.name, split, str(files[key]), Problem.MISSING_PARTNER, detail))
    previous = _previous_samples(manifest_path(out, spec.name, split), label_map)
    jobs = []
    for key in sorted(images.keys() & labels.keys()):
        label_entry = f"labels/{spec.name}/{split}/{key}.png"
        if halved_format is None:
            image_entry, image_out = str(images[key]), None
        else:
            image_entry = f"images/{spec.name}/{split}/{key}{MAPILLARY_VAL_FORMATS[halved_format][2]}"
            image_out = out / image_entry
        jobs.append(
            _Job(
                dataset=spec.name,
                split=split,
                image=images[key],
                label=labels[key],
                label_out=out / label_entry,
                image_out=image_out,
                image_format=halved_format,
                image_entry=image_entry,
                label_entry=label_entry,
                label_map=label_map,
                read_label=spec.read_label,
                previous=previous.get(out / label_entry),
            )
        )
    return jobs


def _previous_samples(path: Path, label_map: LabelMap) -> dict[Path, Sample]:
    """Rows of an earlier manifest by absolute label path; none when it is missing or unreadable, or when its
    labels were written through another label map (an edited custom map: every label is written again)."""
    try:
        if read_metadata(path).get(LABEL_MAP_KEY) != label_map.digest():
            return {}
        return {sample.label: sample for sample in read_manifest(path)}
    except (FileNotFoundError, ValueError):
        return {}


def _run(jobs: list[_Job], workers: int) -> Iterator[BadFile | _Converted]:
    """Convert ``jobs`` in order, on ``workers`` processes; closing the iterator cancels pending jobs."""
    if workers == 1 or len(jobs) < 2:
        yield from map(_convert, jobs)
        return
    workers = min(workers, len(jobs))
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(_convert, jobs, chunksize=max(1, min(64, len(jobs) // (8 * workers))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _convert(job: _Job) -> BadFile | _Converted:
    """Reuse the previous row if its outputs are intact and current, else decode, check, map and write."""
    row = {"dataset": job.dataset, "split": job.split, "image": job.image_entry, "label": job.label_entry}

    def bad(path: Path, problem: Problem, detail: str) -> BadFile:
        return BadFile(job.dataset, job.split, str(path), problem, detail)

    try:
        sources = json.dumps({"image": sha256_file(job.image), "label": sha256_file(job.label)})
    except OSError as error:
        return bad(Path(error.filename or job.image), Problem.UNREADABLE, f"{type(error).__name__}: {error}")
    previous = job.previous
    if (
        previous is not None
        and previous.image == (job.image_out or job.image)
        and previous.image.is_file()
        and job.label_out.is_file()
    ):
        written = job.label_out.read_bytes()
        text = _png_text(written)
        if sha256_bytes(written) == previous.label_sha256 and text.get(SOURCES_KEY) == sources:
            row.update(
                height=previous.height,
                width=previous.width,
                class_pixels=list(previous.class_pixels),
                label_sha256=previous.label_sha256,
            )
            ignored = {
                int(value): int(count)
                for value, count in json.loads(text.get(IGNORED_VALUES_KEY, "{}")).items()
            }
            return _Converted(row, True, _ignored_record(job, ignored))

    try:
        with open_image(job.image) as opened:
            transpose = exif_transpose_of(opened)
            image = rgb_pixels(opened, job.image)
    except _DECODE_ERRORS as error:
        return bad(job.image, Problem.UNREADABLE, f"image: {type(error).__name__}: {error}")
    try:
        values = job.read_label(job.label)
    except UnknownColourError as error:
        return bad(job.label, Problem.UNKNOWN_VALUE, f"{error} of {job.dataset}")
    except _DECODE_ERRORS as error:
        return bad(job.label, Problem.UNREADABLE, f"label: {type(error).__name__}: {error}")
    if values.shape != image.shape[:2]:
        sizes = f"label {values.shape[1]}x{values.shape[0]}, image {image.shape[1]}x{image.shape[0]} ({job.image})"
        return bad(job.label, Problem.SIZE_MISMATCH, sizes)
    unknown = job.label_map.unknown_counts(values)
    if unknown and not job.label_map.unknown_to_ignore:
        count = sum(unknown.values())
        detail = f"values {_head(list(unknown))} ({count} pixels) are not {job.dataset} label values"
        return bad(job.label, Problem.UNKNOWN_VALUE, detail)
    train_ids = job.label_map(values)  # with unknown_to_ignore, the unknown values become 255 here
    if job.image_out is not None and job.image_format is not None:  # a new image, upright: so is its label
        upright = Image.fromarray(orient(image, transpose))
        size = (max(1, upright.width // 2), max(1, upright.height // 2))
        image_format, options, _ = MAPILLARY_VAL_FORMATS[job.image_format]
        with atomic_path(job.image_out) as tmp:
            upright.resize(size, Image.Resampling.BICUBIC).save(tmp, format=image_format, **options)
        train_ids = np.asarray(
            Image.fromarray(orient(train_ids, transpose)).resize(size, Image.Resampling.NEAREST)
        )
        transpose = None  # the new pair is upright as written
    info = PngInfo()
    info.add_text(SOURCES_KEY, sources)
    if unknown:
        info.add_text(IGNORED_VALUES_KEY, json.dumps({str(v): n for v, n in unknown.items()}))
    buffer = io.BytesIO()
    Image.fromarray(train_ids).save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(job.label_out, buffer.getvalue())
    height, width = orient(train_ids, transpose).shape  # upright, as readers return the pair
    row.update(
        height=height,
        width=width,
        class_pixels=np.bincount(train_ids.ravel(), minlength=256)[: job.label_map.num_classes].tolist(),
        label_sha256=sha256_bytes(buffer.getvalue()),
    )
    return _Converted(row, False, _ignored_record(job, unknown))


def _png_text(png: bytes) -> dict[str, str]:
    """The text chunks of a label PNG written by :func:`_convert` (empty when it does not decode)."""
    try:
        with Image.open(io.BytesIO(png)) as label:
            return {key: value for key, value in label.info.items() if isinstance(value, str)}
    except _DECODE_ERRORS:
        return {}


def _ignored_record(job: _Job, pixels: dict[int, int]) -> IgnoredValues | None:
    """The report record of a kept frame whose out-of-table values ``pixels`` became 255; None if none did."""
    return IgnoredValues(job.dataset, job.split, str(job.label), pixels) if pixels else None


def _head(values: list[int], n: int = 10) -> str:
    """``values`` as ``[a, b, ...]``, at most ``n`` of them."""
    return "[" + ", ".join(map(str, values[:n])) + (", ...]" if len(values) > n else "]")
