"""Raw label value -> class id (Cityscapes trainIds 0..18 for the public datasets, 255 ignore), one lookup
table per dataset.

Each map is a 256-entry ``uint8`` table ``lut`` with ``trainId = lut[value]`` plus the set of values the
dataset defines (``known``). A value outside ``known`` is bad data and its frame is reported and skipped,
except where ``unknown_to_ignore`` is set (GTAV): there it becomes 255, as the published GTAV conversion
(Rein's ``tools/convert_datasets/gta.py``, from DAFormer) writes every id outside the Cityscapes table, and
the preparation report counts it. Values above 255 (SYNTHIA's labels are 16-bit) are outside every table:
they map to 255 and are unknown.

Known values per dataset:
- ``gta5`` and ``cityscapes``: Cityscapes label ids 0..33 (GTAV also writes 255 for unlabelled pixels; its
  other values become 255 and are counted, see above).
- ``synthia``: RAND-CITYSCAPES class ids 0..22.
- ``urbansyn``: trainIds 0..18 and 19 (void).
- ``bdd100k``, ``acdc``: trainIds 0..18 and 255.
- ``mapillary``: class indices 0..N-1 of ``config_v1.2.json`` (N = 66 in v1.2).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recyclelora.data.classes import IGNORE_INDEX, NUM_CLASSES
from recyclelora.errors import InvalidInputError

TABLE_SIZE = 256


@dataclass(frozen=True, eq=False)
class LabelMap:
    """Lookup table ``lut`` (value -> class id) and mask ``known`` (values the dataset defines), both (256,).

    ``unknown_to_ignore``: a value outside ``known`` is written as 255 (and counted) instead of making its
    frame bad data. ``num_classes``: size of the class set the ids index (Cityscapes' 19 unless a custom
    dataset says otherwise). ``source``: what else decides the values the table sees (a colour mask's colour
    list: values are positions in it), part of :meth:`digest`.
    """

    name: str
    lut: np.ndarray
    known: np.ndarray
    unknown_to_ignore: bool = False
    num_classes: int = NUM_CLASSES
    source: str = ""

    def __post_init__(self) -> None:
        if self.lut.shape != (TABLE_SIZE,) or self.lut.dtype != np.uint8:
            raise InvalidInputError(
                f"LabelMap {self.name!r}: lut must be a ({TABLE_SIZE},) uint8 array, got "
                f"{self.lut.shape} {self.lut.dtype}"
            )
        if self.known.shape != (TABLE_SIZE,) or self.known.dtype != np.bool_:
            raise InvalidInputError(
                f"LabelMap {self.name!r}: known must be a ({TABLE_SIZE},) bool array, got "
                f"{self.known.shape} {self.known.dtype}"
            )
        bad = np.setdiff1d(self.lut, [*range(self.num_classes), IGNORE_INDEX])
        if bad.size:
            raise InvalidInputError(
                f"LabelMap {self.name!r}: lut holds {bad.tolist()}, which are not class ids "
                f"0..{self.num_classes - 1} or {IGNORE_INDEX}"
            )
        if self.unknown_to_ignore and (self.lut[~self.known] != IGNORE_INDEX).any():
            raise InvalidInputError(
                f"LabelMap {self.name!r}: unknown_to_ignore needs lut = {IGNORE_INDEX} at every value "
                "outside known"
            )

    def digest(self) -> str:
        """SHA-256 of what the map writes: the table, the defined values, the unknown rule, the class count and
        the source of the values."""
        flags = f"{self.unknown_to_ignore}|{self.num_classes}|{self.source}".encode()
        return hashlib.sha256(self.lut.tobytes() + self.known.tobytes() + flags).hexdigest()

    def unknown_counts(self, values: np.ndarray) -> dict[int, int]:
        """Pixel count of each distinct value of the integer array ``values`` that the dataset does not
        define, in ascending order of value."""
        if values.dtype == np.uint8:
            counts = np.bincount(values.ravel(), minlength=TABLE_SIZE)
            unknown = np.flatnonzero((counts > 0) & ~self.known)
            return {int(v): int(counts[v]) for v in unknown}
        present, counts = np.unique(values, return_counts=True)
        inside = (present >= 0) & (present < TABLE_SIZE)
        unknown = ~inside
        unknown[inside] = ~self.known[present[inside]]
        return {int(v): int(c) for v, c in zip(present[unknown], counts[unknown], strict=True)}

    def unknown_values(self, values: np.ndarray) -> np.ndarray:
        """Sorted distinct values of ``values`` that the dataset does not define."""
        return np.fromiter(self.unknown_counts(values), dtype=np.int64)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """TrainIds of an integer label array; values >= 256 become 255."""
        if values.dtype == np.uint8:
            return self.lut[values]
        out = np.full(values.shape, IGNORE_INDEX, dtype=np.uint8)
        inside = (values >= 0) & (values < TABLE_SIZE)
        out[inside] = self.lut[values[inside]]
        return out


def build_label_map(
    name: str,
    mapping: Mapping[int, int],
    known: Iterable[int],
    *,
    unknown_to_ignore: bool = False,
    num_classes: int = NUM_CLASSES,
    source: str = "",
) -> LabelMap:
    """A :class:`LabelMap` from ``{value: class id}`` (unlisted values -> 255) and the defined values."""
    lut = np.full(TABLE_SIZE, IGNORE_INDEX, dtype=np.uint8)
    for value, train_id in mapping.items():
        lut[value] = train_id
    mask = np.zeros(TABLE_SIZE, dtype=bool)
    mask[list(known)] = True
    return LabelMap(name, lut, mask, unknown_to_ignore, num_classes, source)


#: Cityscapes label id -> trainId (the official table of ``cityscapesscripts.helpers.labels``).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

#: SYNTHIA RAND-CITYSCAPES class id -> trainId (terrain, truck and train do not occur).
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15,
    12: 17, 11: 18,
}  # fmt: skip

#: Mapillary Vistas v1.2 class name (``readable`` in ``config_v1.2.json``) -> trainId; others -> 255.
MAPILLARY_NAME_TO_TRAINID: dict[str, int] = {
    "Road": 0, "Bike Lane": 0, "Crosswalk - Plain": 0, "Parking": 0, "Service Lane": 0,
    "Lane Marking - Crosswalk": 0, "Lane Marking - General": 0,
    "Sidewalk": 1, "Curb": 1, "Curb Cut": 1, "Pedestrian Area": 1,
    "Building": 2, "Wall": 3, "Fence": 4,
    "Pole": 5, "Street Light": 5, "Utility Pole": 5,
    "Traffic Light": 6,
    "Traffic Sign (Front)": 7, "Traffic Sign (Back)": 7, "Traffic Sign Frame": 7,
    "Vegetation": 8, "Terrain": 9, "Sky": 10, "Person": 11,
    "Bicyclist": 12, "Motorcyclist": 12, "Other Rider": 12,
    "Car": 13, "Truck": 14, "Bus": 15, "On Rails": 16, "Motorcycle": 17, "Bicycle": 18,
}  # fmt: skip

_TRAIN_IDS = range(NUM_CLASSES)
_IDENTITY = {i: i for i in _TRAIN_IDS}

GTA5 = build_label_map("gta5", CITYSCAPES_ID_TO_TRAINID, [*range(34), IGNORE_INDEX], unknown_to_ignore=True)
CITYSCAPES = build_label_map("cityscapes", CITYSCAPES_ID_TO_TRAINID, range(34))
SYNTHIA = build_label_map("synthia", SYNTHIA_ID_TO_TRAINID, range(23))
URBANSYN = build_label_map("urbansyn", _IDENTITY, range(NUM_CLASSES + 1))
BDD100K = build_label_map("bdd100k", _IDENTITY, [*_TRAIN_IDS, IGNORE_INDEX])
ACDC = build_label_map("acdc", _IDENTITY, [*_TRAIN_IDS, IGNORE_INDEX])

FIXED_LABEL_MAPS: dict[str, LabelMap] = {
    m.name: m for m in (GTA5, CITYSCAPES, SYNTHIA, URBANSYN, BDD100K, ACDC)
}

MAPILLARY_CONFIG = "config_v1.2.json"


def mapillary_label_map(config: str | os.PathLike[str]) -> LabelMap:
    """The Mapillary map from ``config_v1.2.json``: class index i -> trainId of ``labels[i]["readable"]``.

    Raises ``ValueError`` when the file lacks one of the class names of the v1.2 table (another version).
    """
    labels = json.loads(Path(config).read_text(encoding="utf-8"))["labels"]
    names = [label["readable"] for label in labels]
    missing = sorted(set(MAPILLARY_NAME_TO_TRAINID) - set(names))
    if missing or len(names) > TABLE_SIZE:
        raise InvalidInputError(
            f"{config} is not a Mapillary Vistas v1.2 class list ({len(names)} classes, missing {missing}): "
            f"use {MAPILLARY_CONFIG} from the dataset's root folder"
        )
    mapping = {i: MAPILLARY_NAME_TO_TRAINID[n] for i, n in enumerate(names) if n in MAPILLARY_NAME_TO_TRAINID}
    return build_label_map("mapillary", mapping, range(len(names)))


def load_label_map(dataset: str, raw: str | os.PathLike[str]) -> LabelMap:
    """The label map of ``dataset``; Mapillary's is read from ``<raw>/config_v1.2.json``."""
    if dataset == "mapillary":
        config = Path(raw) / MAPILLARY_CONFIG
        if not config.is_file():
            raise FileNotFoundError(
                f"expected the Mapillary class list {config} (shipped at the root of the Mapillary Vistas "
                "download, https://www.mapillary.com/dataset/vistas)"
            )
        return mapillary_label_map(config)
    if dataset not in FIXED_LABEL_MAPS:
        raise InvalidInputError(
            f"no label map for dataset {dataset!r}: choose one of {[*FIXED_LABEL_MAPS, 'mapillary']}"
        )
    return FIXED_LABEL_MAPS[dataset]
