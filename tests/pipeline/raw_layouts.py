"""Tiny raw datasets with several frames per split, as their owners distribute them, for whole pipeline runs.

The layouts (folders, file names, pairing suffixes, Mapillary's ``config_v1.2.json``) are those of
:mod:`recyclelora.data.raw`; the label values and writers (GTAV palette PNGs, SYNTHIA 16-bit PNGs with the
class id in red, grey trainId/labelId PNGs) are the ones ``tests/data/conftest.py`` fakes them with, imported
from there. That fixture writes one to three 16 x 12 frames per dataset; a pipeline run needs more (a batch of
4 training frames) and evaluation images of at least two patches a side, so the frame counts and sizes are
parameters here. Every file name follows the dataset's own scheme, so ``python -m pipeline data`` prepares
these folders exactly as it prepares the real downloads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tests.data.conftest import LAYOUTS, MAPILLARY_NAMES, tile, write_gray, write_rgb

#: Frames written per dataset and split (ours): enough for one batch of 4 in every paper setting, and one
#: evaluation image per target domain.
FRAMES: dict[str, dict[str, int]] = {
    "gta5": {"train": 6},
    "synthia": {"train": 2},
    "urbansyn": {"train": 2},
    "cityscapes": {"train": 4, "val": 1},
    "bdd100k": {"train": 2, "val": 1},
    "mapillary": {"train": 1, "val": 1},
}
#: Image size (width, height) of the raw frames: 2:1 like the driving datasets, 2 x 4 patches of 16, so an
#: evaluation image without resize rule is one sliding window.
SIZE = (64, 32)
#: Mapillary's validation frames, square: halved to 32 x 32, then fitted into 2048 x 1024 by the paper
#: presets' eval.resize rule: 1024 x 1024, the fewest 512-px windows (3 x 3) any aspect ratio gives.
MAPILLARY_VAL_SIZE = (64, 64)

_CITIES = {"train": ("aachen", "bochum", "bremen", "cologne"), "val": ("frankfurt", "lindau", "munster")}
_MAPILLARY_FOLDERS = {"train": "training", "val": "validation"}


def _files(name: str, split: str, index: int) -> tuple[str, str]:
    """(image, label) of frame ``index`` of ``name``/``split``, relative to the raw folder."""
    if name == "gta5":
        key = f"{index + 1:05d}"
        return f"images/{key}.png", f"labels/{key}.png"
    if name == "synthia":
        key = f"{index:07d}"
        return f"RGB/{key}.png", f"GT/LABELS/{key}.png"
    if name == "urbansyn":
        key = f"{index + 1:04d}"
        return f"rgb/rgb_{key}.png", f"ss/ss_{key}.png"
    if name == "cityscapes":
        city = _CITIES[split][index % len(_CITIES[split])]
        key = f"{city}/{city}_{index:06d}_000019"
        return f"leftImg8bit/{split}/{key}_leftImg8bit.png", f"gtFine/{split}/{key}_gtFine_labelIds.png"
    if name == "bdd100k":
        key = f"{index:08x}-{7 * index + 1:08x}"
        ending = "_train_id" if index % 2 == 0 else ""  # both mask namings of the BDD100K releases
        return f"images/10k/{split}/{key}.jpg", f"labels/sem_seg/masks/{split}/{key}{ending}.png"
    if name == "mapillary":
        folder, key = _MAPILLARY_FOLDERS[split], f"{split}{index:03d}xYz"
        return f"{folder}/images/{key}.jpg", f"{folder}/v1.2/labels/{key}.png"
    raise ValueError(f"no tiny layout for {name!r}: choose one of {list(FRAMES)}")


def write_raw_dataset(name: str, root: Path, frames: Mapping[str, int] | None = None, seed: int = 0) -> Path:
    """Write the tiny raw dataset ``name`` under ``root``, ``frames[split]`` image/label pairs per split."""
    _, pairs, write_label = LAYOUTS[name]
    root.mkdir(parents=True, exist_ok=True)
    if name == "mapillary":
        config = {"labels": [{"readable": n, "name": n.lower(), "color": [0, 0, 0]} for n in MAPILLARY_NAMES]}
        (root / "config_v1.2.json").write_text(json.dumps(config))
    for split, count in (frames or FRAMES[name]).items():
        for index in range(count):
            image, label = _files(name, split, index)
            frame_seed = seed + 1000 * index + (0 if split == "train" else 500)
            if name == "mapillary" and split == "val":  # halved by prepare: constant 2 x 2 blocks of labels
                width, height = MAPILLARY_VAL_SIZE
                values = np.kron(
                    tile(list(pairs), frame_seed, (height // 2, width // 2)), np.ones((2, 2), int)
                )
            else:
                width, height = SIZE
                values = tile(list(pairs), frame_seed, (height, width))
            write_rgb(root / image, frame_seed, (width, height))
            write_label(root / label, values)
            if name == "cityscapes":  # shipped beside every label, never read
                instance_ids = label.replace("_gtFine_labelIds.png", "_gtFine_instanceIds.png")
                write_gray(root / instance_ids, np.full((height, width), 26))
    return root


def write_raw_datasets(names: list[str] | tuple[str, ...], raw_root: Path) -> dict[str, Path]:
    """Each of ``names`` under ``raw_root/<name>``: ``{name: folder}``."""
    return {name: write_raw_dataset(name, raw_root / name, seed=i) for i, name in enumerate(names)}
