"""Your own dataset: a folder of images and label masks, its class list and a label map onto it.

A :class:`~recyclelora.data.custom_config.CustomDatasetConfig` (a ``datasets.custom`` entry of params.yaml, or the YAML file given to
``recyclelora-cli data prepare --custom``) says where the pairs are, which classes the run predicts and how each
raw mask value, or mask colour, becomes a class::

    root: data/raw/fields                 # the dataset's folder
    splits: {train: train, val: val}      # split -> what {split} stands for in the patterns
    images: "images/{split}/*.jpg"        # glob below root; the part before the first wildcard is the folder
    labels: "masks/{split}/*.png"         # an image and a mask pair when their paths below it, without
    label_suffix: "_mask.png"             # the suffixes, are equal (img_001.jpg <-> img_001_mask.png)
    classes: [soil, crop, weed, water, sky]
    label_map: {0: soil, 1: crop, 2: weed, 3: water, 4: sky, 255: ignore}   # or {"#00ff00": crop, ...}

Pairs may instead be listed (``lists: {train: train.txt}``: one ``image label`` pair of paths below ``root``
per line). Preparing writes the masks as class ids ``0..K-1`` (255 ignored) and manifests whose schema records
the class set, so that training, evaluation, reports and export follow it (:mod:`recyclelora.data.classes`).
"""

from __future__ import annotations

import functools
import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recyclelora.data.classes import IGNORE_INDEX
from recyclelora.data.custom_config import CustomDatasetConfig
from recyclelora.data.labelmaps import LabelMap, build_label_map
from recyclelora.data.raw.layout import SPLIT, FileSet, RawDataset, read_index_png
from recyclelora.errors import InvalidInputError


class UnknownColourError(ValueError):
    """A colour mask holds colours its label map does not define; the message lists them."""


def custom_label_map(config: CustomDatasetConfig, name: str) -> LabelMap:
    """The lookup table of dataset ``name``: mask value (or, by colour, the colour's position in
    ``label_map``) -> class id."""
    ids = {cls: index for index, cls in enumerate(config.classes)}
    keys = list(range(len(config.label_map))) if config.by_colour else list(config.label_map)
    mapping = {
        key: ids.get(cls, IGNORE_INDEX) for key, cls in zip(keys, config.label_map.values(), strict=True)
    }
    ignore = config.unknown == "ignore"
    colours = ",".join(config.label_map) if config.by_colour else ""  # what positions stand for
    return build_label_map(  # type: ignore[arg-type]
        name, mapping, keys, unknown_to_ignore=ignore, num_classes=len(config.classes), source=colours
    )


def custom_raw_dataset(config: CustomDatasetConfig, name: str) -> RawDataset:
    """Dataset ``name`` as a :class:`~recyclelora.data.raw.RawDataset`: its splits, files and mask reader."""
    source = f"your own files (datasets.custom.{name}: root {config.root})"
    reader = read_index_png
    if config.by_colour:
        colours = tuple(tuple(int(key[i : i + 2], 16) for i in (1, 3, 5)) for key in config.label_map)  # type: ignore[index]
        reader = functools.partial(read_colour_mask, colours=colours, strict=config.unknown == "error")
    images, labels = (
        _file_set(config.images, config.image_suffix),
        _file_set(config.labels, config.label_suffix),
    )
    if config.lists:
        return ListedDataset(name, source, config.splits, images, labels, reader, lists=config.lists)
    return RawDataset(name, source, config.splits, images, labels, reader)


def _file_set(pattern: str, suffix: str | None) -> FileSet:
    """A glob below root split at its first wildcard into folder and pattern; the suffix defaults to the
    extension of the pattern's last part."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part.replace(SPLIT, "")))
    folder, rest = "/".join(parts[:first]) or ".", "/".join(parts[first:])
    ending = suffix if suffix is not None else Path(parts[-1]).suffix
    return FileSet(folder, rest, (ending,))


def read_colour_mask(path: Path, *, colours: tuple[tuple[int, int, int], ...], strict: bool) -> np.ndarray:
    """An RGB mask as the positions of its colours in ``colours`` (uint8); a colour not there is an
    :class:`UnknownColourError` (``strict``) or position 255, which no table defines."""
    from recyclelora.data.images import open_image, rgb_pixels

    with open_image(path) as image:
        rgb = rgb_pixels(image, path).astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], dtype=np.int32)
    order = np.argsort(table)
    found = np.searchsorted(table[order], codes).clip(0, len(table) - 1)
    known = table[order][found] == codes
    if strict and not known.all():
        present, counts = np.unique(codes[~known], return_counts=True)
        listed = ", ".join(f"#{int(c):06x}" for c in present[:10]) + (", ..." if len(present) > 10 else "")
        raise UnknownColourError(f"colours [{listed}] ({int(counts.sum())} pixels) are not in the label map")
    return np.where(known, order[found], IGNORE_INDEX).astype(np.uint8)


@dataclass(frozen=True)
class ListFile:
    """One column (0: images, 1: masks) of a split's list file: ``image mask`` paths below root, per line.

    The pairing key is the image's path below root without its extension, for both columns."""

    list_file: str
    column: int

    def root(self, raw: Path, raw_split: str) -> Path:
        return raw

    def describe(self, raw_split: str) -> str:
        return f"{self.list_file} ({'images' if self.column == 0 else 'masks'}, column {self.column + 1})"

    def collect(self, raw: Path, raw_split: str) -> dict[str, Path]:
        """Pairing key -> file of this column, for the lines whose file exists."""
        path = raw / self.list_file
        if not path.is_file():
            raise FileNotFoundError(f"list file {path} does not exist: write one 'image mask' pair per line")
        found: dict[str, Path] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            entries = line.split()
            if len(entries) != 2:
                raise InvalidInputError(f"{path} line {number}: expected 'image mask', got {line.strip()!r}")
            relative = Path(entries[0])
            if relative.is_absolute() or ".." in relative.parts:
                raise InvalidInputError(f"{path} line {number}: {entries[0]} must be a path below {raw}")
            key = relative.with_suffix("").as_posix()
            if key in found:
                raise InvalidInputError(f"{path} line {number}: image {entries[0]} is listed twice")
            file = raw / entries[self.column]
            if file.is_file():
                found[key] = file
        return found


@dataclass(frozen=True)
class ListedDataset(RawDataset):
    """A :class:`RawDataset` whose listed splits pair files by list file (:class:`ListFile`); the keys of
    ``lists`` are the splits' raw names here."""

    lists: dict[str, str] = field(default_factory=dict)

    def files(self, split: str) -> tuple[FileSet | ListFile, FileSet | ListFile]:
        if split in self.lists:
            return ListFile(self.lists[split], 0), ListFile(self.lists[split], 1)
        return self.images, self.labels
