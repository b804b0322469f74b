"""A custom dataset's settings (:class:`CustomDatasetConfig`), free of the readers: params.yaml's
``datasets.custom`` entries and the YAML file of ``recyclelora-cli data prepare --custom``. What they mean is in
:mod:`recyclelora.data.custom`."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from recyclelora.data.classes import ClassSet
from recyclelora.data.raw import RAW_DATASETS
from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

#: The label map's word for "not a class": the pixel is written as the ignore index.
IGNORE = "ignore"
#: What a dataset's name may look like: it names manifests, folders and MLflow datasets.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
#: Mask values a label map may name (label PNGs are read as 8-bit).
MASK_VALUES = 256
_HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def check_custom_name(name: str) -> None:
    """Refuse a custom dataset name that is not a plain file name, or that is a public dataset's."""
    if not DATASET_NAME.fullmatch(name):
        raise InvalidInputError(
            f"dataset name {name!r} must be letters, digits, '_' and '-' (it names manifests and folders)"
        )
    if name in RAW_DATASETS:
        raise InvalidInputError(
            f"dataset name {name!r} is a public dataset's: give your own dataset another name"
        )


@dataclass(frozen=True)
class CustomDatasetConfig:
    """A dataset of your own: image and mask files below ``root``, their classes and the label map."""

    root: str = field(metadata={"help": "the dataset's folder (relative: to the workspace)"})
    classes: tuple[str, ...] = field(
        metadata={"help": "class names in id order (id = position); 'ignore' is reserved"}
    )
    label_map: dict[int | str, str] = field(
        metadata={
            "help": "mask value (0..255) or colour ('#rrggbb', for RGB masks) -> class name or 'ignore'"
        }
    )
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": ""},
        metadata={
            "help": "split -> the text {split} stands for in images/labels (e.g. {train: tr, val: va})"
        },
    )
    images: str = field(
        default="images/{split}/*.png",
        metadata={
            "help": "glob of the images below root; the part before the first wildcard is their folder"
        },
    )
    labels: str = field(default="labels/{split}/*.png", metadata={"help": "glob of the masks below root"})
    image_suffix: str | None = field(
        default=None,
        metadata={"help": "ending removed from an image's name to pair it; null = its extension"},
    )
    label_suffix: str | None = field(
        default=None,
        metadata={
            "help": "ending removed from a mask's name to pair it (e.g. _mask.png); null = its extension"
        },
    )
    lists: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "split -> list file below root, one 'image mask' pair of paths below root per line; "
            "replaces the images/labels globs for that split"
        },
    )
    palette: tuple[tuple[int, int, int], ...] | None = field(
        default=None, metadata={"help": "RGB colour per class for label maps and overlays; null = generated"}
    )
    unknown: Literal["error", "ignore"] = field(
        default="error",
        metadata={
            "help": "a mask value or colour missing from label_map: error (the pair is reported and skipped) "
            "or ignore (written as 255 and counted in the report)"
        },
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if IGNORE in self.classes:
            raise InvalidInputError(
                f"classes: {IGNORE!r} is reserved for ignored pixels; name the class otherwise"
            )
        self.class_set()  # names and palette
        if not self.splits:
            raise InvalidInputError("splits is empty: name at least one split, e.g. {train: ''}")
        extra = sorted(set(self.lists) - set(self.splits))
        if extra:
            raise InvalidInputError(f"lists names split(s) {extra} that splits lacks: {sorted(self.splits)}")
        for key, value in (("images", self.images), ("labels", self.labels)):
            if not glob.has_magic(value) or Path(value).is_absolute() or ".." in Path(value).parts:
                raise InvalidInputError(
                    f"{key}={value!r} must be a relative glob below root with a wildcard, e.g. 'images/*.png'"
                )
        if not self.label_map:
            raise InvalidInputError(
                "label_map is empty: map each mask value or colour to a class or 'ignore'"
            )
        unknown = sorted({name for name in self.label_map.values() if name != IGNORE} - set(self.classes))
        if unknown:
            raise InvalidInputError(
                f"label_map maps onto {unknown}, which are not in classes {list(self.classes)} (or 'ignore')"
            )
        kinds = {type(key) for key in self.label_map}
        if kinds == {int}:
            bad = sorted(key for key in self.label_map if not 0 <= key < MASK_VALUES)  # type: ignore[operator]
            if bad:
                raise InvalidInputError(f"label_map values {bad} are outside 0..{MASK_VALUES - 1}")
        elif kinds == {str}:
            bad = sorted(key for key in self.label_map if not _HEX_COLOUR.fullmatch(key))  # type: ignore[arg-type]
            if bad:
                raise InvalidInputError(f"label_map keys {bad} are not colours '#rrggbb' (nor integers)")
            if len(self.label_map) >= MASK_VALUES:
                raise InvalidInputError(
                    f"label_map has {len(self.label_map)} colours: at most {MASK_VALUES - 1}"
                )
        else:
            raise InvalidInputError("label_map keys mix mask values and colours: use one kind")

    @property
    def by_colour(self) -> bool:
        """Whether the masks are RGB images whose colours are the classes."""
        return all(isinstance(key, str) for key in self.label_map)

    def class_set(self) -> ClassSet:
        return ClassSet.of(self.classes, self.palette)
