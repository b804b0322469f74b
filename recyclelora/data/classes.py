"""Class sets: the names and colours of a run's semantic classes, ids ``0..K-1`` (ignore index 255).

The default is the 19 Cityscapes training classes on which every public DGSS dataset is scored. A custom
dataset brings its own (:mod:`recyclelora.data.custom`); a manifest records its set, a checkpoint the set it
was trained on.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recyclelora.errors import InvalidInputError

IGNORE_INDEX = 255
#: Most classes a set may hold: label PNGs are 8-bit and 255 is the ignore index.
MAX_CLASSES = IGNORE_INDEX

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)

#: Cityscapes colour of each trainId (RGB), as in the official label table.
PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip

Colour = tuple[int, int, int]


def default_palette(count: int) -> tuple[Colour, ...]:
    """``count`` distinct colours: hues spaced by the golden ratio, full saturation, value 0.9."""
    colours = []
    for index in range(count):
        rgb = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 0.9)
        colours.append(tuple(round(c * 255) for c in rgb))
    return tuple(colours)  # type: ignore[return-value]


@dataclass(frozen=True)
class ClassSet:
    """Ordered class names (class id = position) and one RGB colour per class for label maps and overlays."""

    names: tuple[str, ...]
    palette: tuple[Colour, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.names) <= MAX_CLASSES:
            raise InvalidInputError(f"a class set needs 1 to {MAX_CLASSES} classes, got {len(self.names)}")
        blank = [i for i, name in enumerate(self.names) if not isinstance(name, str) or not name.strip()]
        if blank:
            raise InvalidInputError(f"class names must be non-empty strings: ids {blank} are not")
        repeated = sorted({name for name in self.names if self.names.count(name) > 1})
        if repeated:
            raise InvalidInputError(f"class names must be unique: {repeated} appear more than once")
        if len(self.palette) != len(self.names):
            raise InvalidInputError(
                f"the palette has {len(self.palette)} colours for {len(self.names)} classes: give one per class"
            )
        for name, colour in zip(self.names, self.palette, strict=True):
            if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
                raise InvalidInputError(f"class {name!r}: colour {list(colour)} is not 3 integers in 0..255")

    @classmethod
    def of(cls, names: Sequence[str], palette: Sequence[Sequence[int]] | None = None) -> ClassSet:
        """A set from names and colours (:func:`default_palette` when ``palette`` is None)."""
        colours = default_palette(len(names)) if palette is None else palette
        return cls(tuple(names), tuple(tuple(int(c) for c in colour) for colour in colours))  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.names)

    def to_json(self) -> str:
        return json.dumps({"names": list(self.names), "palette": [list(c) for c in self.palette]})

    @classmethod
    def from_json(cls, text: str) -> ClassSet:
        entry = json.loads(text)
        return cls.of(entry["names"], entry["palette"])

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """Map an (H, W) class-id array to an (H, W, 3) RGB image; ids outside the set are black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: len(self)] = np.asarray(self.palette, dtype=np.uint8)
        return lut[label]

    def onto(self, training: ClassSet) -> np.ndarray | None:
        """Lookup table (256,) taking this set's ids to ``training``'s ids of the same names (255 stays 255),
        or None when the two sets have the same names in the same order.

        Raises :class:`~recyclelora.errors.InvalidInputError` when a class of this set is not a training class:
        a model cannot be scored on a class it never learned.
        """
        if self.names == training.names:
            return None
        unknown = [name for name in self.names if name not in training.names]
        if unknown:
            raise InvalidInputError(
                f"classes {unknown} are not among the model's {len(training)} training classes "
                f"{list(training.names)}: map the target's labels onto the training classes (its label_map) "
                "or train on a class set that has them"
            )
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[: len(self)] = [training.names.index(name) for name in self.names]
        return lut


CITYSCAPES_CLASSES = ClassSet.of(CLASS_NAMES, PALETTE.tolist())


def classes_of_count(count: int) -> ClassSet:
    """The class set of a model that records none: Cityscapes' for 19 classes, else ``class 0..K-1``."""
    if count == NUM_CLASSES:
        return CITYSCAPES_CLASSES
    return ClassSet.of([f"class {index}" for index in range(count)])


def same_classes(sets: Mapping[str, ClassSet], what: str) -> ClassSet:
    """The one class set of ``sets`` (``{dataset: its set}``, e.g. a run's training and validation data, named
    ``what`` in the message); raises when two of them differ."""
    if not sets:
        raise InvalidInputError(f"{what}: no dataset given")
    (first, classes), *others = sets.items()
    for name, other in others:
        if other.names != classes.names:
            raise InvalidInputError(
                f"{what} mix class sets: {first} has {list(classes.names)}, {name} has {list(other.names)}: "
                "give datasets labelled with one class list (a custom dataset's label_map can map onto it)"
            )
    return classes
