"""A torch dataset over one or several manifests, with seeded per-manifest subsets and seeded augmentation.

Sample ``i`` of epoch ``e`` is transformed with ``np.random.default_rng([seed, e, i])``, so what a sample
looks like depends on (seed, epoch, index) only, never on the number of DataLoader workers or their order.
A manifest given a subset size keeps that many of its rows, drawn without replacement by
``np.random.default_rng([seed, *stem.encode()])`` (``stem``: the manifest's file name without ``.parquet``):
each manifest has its own stream, so its draw does not depend on the other manifests or their order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recyclelora.data.classes import ClassSet
from recyclelora.data.images import ImageFileError, read_pair
from recyclelora.data.manifest import Sample, common_classes, read_manifest
from recyclelora.data.pixel_limits import DEFAULT_MAX_PIXELS, check_max_pixels
from recyclelora.data.subset import check_subset
from recyclelora.data.transforms import SegmentationTransform
from recyclelora.errors import InvalidInputError
from recyclelora.io import atomic_path

PathLike = str | os.PathLike[str]

#: Columns of the record of a run's training samples (:func:`write_kept_samples`).
KEPT_SCHEMA = pa.schema(
    [
        ("manifest", pa.string()),  # the manifest as given (data.train)
        ("row", pa.int64()),  # 0-based row of the sample in that manifest
        ("name", pa.string()),  # the image's file name without suffix (the item's ``name``)
        ("image", pa.string()),  # the image path, resolved as the dataset reads it
    ]
)


@dataclass(frozen=True)
class KeptSample:
    """A sample a dataset keeps, with where it comes from: its manifest and its row there."""

    manifest: Path
    row: int
    sample: Sample


def write_kept_samples(path: PathLike, kept: Sequence[KeptSample]) -> Path:
    """Write ``kept`` as a Parquet table of :data:`KEPT_SCHEMA`, atomically: what a run trained on."""
    table = pa.table(
        {
            "manifest": [str(item.manifest) for item in kept],
            "row": [item.row for item in kept],
            "name": [item.sample.image.stem for item in kept],
            "image": [str(item.sample.image) for item in kept],
        },
        schema=KEPT_SCHEMA,
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def load_pair(sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Read a sample's RGB image (H, W, 3) and trainId label (H, W) as uint8 arrays, checking their sizes.

    Both are read by :func:`~recyclelora.data.images.read_pair`: upright by the image's EXIF orientation, the
    image as a viewer shows it, the label's values exactly, neither above ``max_pixels``. A file that cannot be
    read so (missing, truncated, too large, of a refused mode) raises an
    :class:`~recyclelora.data.images.ImageFileError` naming it, its dataset and what to do.
    """
    try:
        image, label = read_pair(sample.image, sample.label, max_pixels=max_pixels)
    except ImageFileError as error:
        raise ImageFileError(
            f"cannot read a sample of dataset {sample.dataset!r} ({sample.image}, {sample.label}): {error}"
        ) from None
    if label.shape != image.shape[:2]:
        raise InvalidInputError(
            f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but image {sample.image} is "
            f"{image.shape[1]}x{image.shape[0]} (upright): resize or drop this pair and prepare the dataset again"
        )
    return image, label


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples of the concatenated manifests (each whole or a seeded subset of it), transformed on access.

    Items are ``dict(image=FloatTensor (3, H, W), label=LongTensor (H, W), name=str, dataset=str)``.
    ``subset={stem: N}`` keeps N rows of the manifest of that stem (see the module docstring for the draw),
    in manifest order; manifests not named are kept whole. Images and labels above ``max_pixels`` are refused
    when read (:func:`load_pair`). :attr:`kept` lists the kept samples in dataset order (manifests in the
    order given) with their manifest and row, to be recorded with a run (:func:`write_kept_samples`). Call
    :meth:`set_epoch` before each epoch to vary the augmentation reproducibly. With ``classes`` (a model's),
    labels come as ids of that set: a manifest of another class set has its ids mapped by class name
    (:meth:`~recyclelora.data.classes.ClassSet.onto`), one naming a class outside it is refused.
    """

    def __init__(
        self,
        manifest_paths: PathLike | Sequence[PathLike],
        transform: SegmentationTransform,
        *,
        subset: Mapping[str, int] | None = None,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        classes: ClassSet | None = None,
    ) -> None:
        paths = [manifest_paths] if isinstance(manifest_paths, (str, os.PathLike)) else list(manifest_paths)
        if not paths:
            raise InvalidInputError("no manifest given: pass at least one manifest path")
        if seed < 0:
            raise InvalidInputError(f"seed={seed} must be a non-negative integer")
        check_max_pixels(max_pixels)
        subset = {} if subset is None else subset
        check_subset(paths, subset, "subset")
        self.manifests: tuple[Path, ...] = tuple(Path(path) for path in paths)
        self.classes = common_classes(self.manifests, f"datasets {[p.stem for p in self.manifests]}")
        self.label_lut = None if classes is None else self.classes.onto(classes)
        kept: list[KeptSample] = []
        for path in self.manifests:
            samples = read_manifest(path)
            rows: Sequence[int] = range(len(samples))
            size = subset.get(path.stem)
            if size is not None:
                if size > len(samples):
                    raise InvalidInputError(
                        f"subset {path.stem}={size} asks for more than the {len(samples)} samples of {path} "
                        f"(data.subset.{path.stem} in params.yaml): give at most {len(samples)}"
                    )
                rng = np.random.default_rng([seed, *path.stem.encode()])
                rows = np.sort(rng.choice(len(samples), size, replace=False)).tolist()
            kept.extend(KeptSample(path, row, samples[row]) for row in rows)
        self.kept: tuple[KeptSample, ...] = tuple(kept)
        self.transform = transform
        self.seed = seed
        self.max_pixels = max_pixels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``; call it before iterating the epoch's DataLoader."""
        if epoch < 0:
            raise InvalidInputError(f"epoch={epoch} must be >= 0")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.kept):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self.kept)} samples")
        sample = self.kept[index].sample
        image, label = load_pair(sample, self.max_pixels)
        if self.label_lut is not None:
            label = self.label_lut[label]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image_out, label_out = self.transform(image, label, rng)
        return {"image": image_out, "label": label_out, "name": sample.image.stem, "dataset": sample.dataset}
