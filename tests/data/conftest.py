"""Tiny raw datasets (16 x 12 px) in each dataset's distributed layout and file format.

Every label tiles (raw value, expected trainId) pairs written out here from the dataset table, so the
prepared labels can be checked pixel for pixel against an oracle independent of the code under test.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from PIL import Image

H, W = 12, 16

CITYSCAPES_PAIRS = {label.id: label.trainId for label in cityscapes_labels if 0 <= label.id <= 33}
CITYSCAPES_PAIRS = {k: (255 if v in (-1, 255) else v) for k, v in CITYSCAPES_PAIRS.items()}
GTA5_PAIRS = {**CITYSCAPES_PAIRS, 255: 255}
SYNTHIA_PAIRS = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10, 10: 11, 17: 12, 8: 13, 19: 15, 12: 17,
    11: 18, 0: 255, 13: 255, 14: 255, 16: 255, 18: 255, 20: 255, 22: 255,
}  # fmt: skip
TRAINID_PAIRS = {**{i: i for i in range(19)}, 255: 255}
URBANSYN_PAIRS = {**{i: i for i in range(19)}, 19: 255}

# Mapillary v1.2 readable class name -> trainId (the dataset table); a few void classes -> 255.
MAPILLARY_TABLE = {
    "Road": 0, "Bike Lane": 0, "Crosswalk - Plain": 0, "Parking": 0, "Service Lane": 0,
    "Lane Marking - Crosswalk": 0, "Lane Marking - General": 0, "Sidewalk": 1, "Curb": 1, "Curb Cut": 1,
    "Pedestrian Area": 1, "Building": 2, "Wall": 3, "Fence": 4, "Pole": 5, "Street Light": 5,
    "Utility Pole": 5, "Traffic Light": 6, "Traffic Sign (Front)": 7, "Traffic Sign (Back)": 7,
    "Traffic Sign Frame": 7, "Vegetation": 8, "Terrain": 9, "Sky": 10, "Person": 11, "Bicyclist": 12,
    "Motorcyclist": 12, "Other Rider": 12, "Car": 13, "Truck": 14, "Bus": 15, "On Rails": 16,
    "Motorcycle": 17, "Bicycle": 18, "Bird": 255, "Guard Rail": 255, "Bridge": 255, "Caravan": 255,
    "Ego Vehicle": 255, "Unlabeled": 255,
}  # fmt: skip
MAPILLARY_NAMES = sorted(MAPILLARY_TABLE, key=lambda n: (len(n) * 7919) % 97)  # an order unlike the table's
MAPILLARY_PAIRS = {i: MAPILLARY_TABLE[n] for i, n in enumerate(MAPILLARY_NAMES)}


def tile(values: list[int], seed: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """An array of ``shape`` holding every value of ``values`` at least once, shuffled by ``seed``."""
    rng = np.random.default_rng(seed)
    flat = np.resize(np.asarray(values), shape[0] * shape[1])
    return rng.permutation(flat).reshape(shape)


def write_rgb(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def write_palette(path: Path, values: np.ndarray) -> None:
    """A palette ("P") PNG whose indices are ``values`` (GTAV's label format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (values.shape[1], values.shape[0]), values.astype(np.uint8).tobytes())
    image.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tolist())
    image.save(path)


def write_png16(path: Path, channels: np.ndarray) -> None:
    """An (H, W, 3) uint16 array as a 16-bit RGB PNG, encoded here from the PNG spec (channel 0 = red)."""
    h, w, _ = channels.shape
    rows = b"".join(b"\x00" + channels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def synthia_label(path: Path, ids: np.ndarray, seed: int) -> None:
    """SYNTHIA GT: class id in red, instance ids (large, to catch a wrong channel) in green and blue."""
    noise = np.random.default_rng(seed).integers(1000, 60000, (*ids.shape, 2))
    write_png16(path, np.dstack([ids, noise]).astype(np.uint16))


LabelWriter = Callable[[Path, np.ndarray], None]


@dataclass
class RawFixture:
    """A raw dataset folder and, per (split, key), the trainIds prepare must produce (and the raw label)."""

    name: str
    raw: Path
    expected: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    labels: dict[tuple[str, str], tuple[Path, np.ndarray, LabelWriter]] = field(default_factory=dict)

    def put_values(self, split: str, key: str, pixels: dict[int, int]) -> None:
        """Rewrite the label of (split, key) with ``pixels[v]`` pixels of value ``v`` (raster order from the
        top-left corner) and expect 255 there: for values outside the dataset's table (not halved pairs)."""
        path, values, write_label = self.labels[(split, key)]
        assert self.expected[(split, key)].shape == values.shape, "put_values needs a pair that is not halved"
        flat, expected = values.ravel().copy(), self.expected[(split, key)].ravel().copy()
        start = 0
        for value, count in pixels.items():
            flat[start : start + count] = value
            expected[start : start + count] = 255
            start += count
        values = flat.reshape(values.shape)
        write_label(path, values)
        self.labels[(split, key)] = (path, values, write_label)
        self.expected[(split, key)] = expected.reshape(values.shape)

    def add(
        self,
        split: str,
        key: str,
        image: Path,
        label: Path,
        pairs: dict[int, int],
        write_label: LabelWriter,
        seed: int,
        halve: bool = False,
    ) -> None:
        raw_values = tile(list(pairs), seed, (H // 2, W // 2) if halve else (H, W))
        if halve:  # constant 2x2 blocks, so nearest halving has one right answer
            raw_values = np.kron(raw_values, np.ones((2, 2), dtype=raw_values.dtype))
        write_rgb(image, seed)
        write_label(label, raw_values)
        self.labels[(split, key)] = (label, raw_values, write_label)
        expected = np.vectorize(pairs.__getitem__, otypes=[np.uint8])(raw_values)
        self.expected[(split, key)] = expected[::2, ::2] if halve else expected


def _gta5(root: Path) -> list[tuple]:
    return [("train", k, f"images/{k}.png", f"labels/{k}.png") for k in ("00001", "00002", "00003")]


def _synthia(root: Path) -> list[tuple]:
    return [("train", k, f"RGB/{k}.png", f"GT/LABELS/{k}.png") for k in ("0000000", "0000001")]


def _urbansyn(root: Path) -> list[tuple]:
    return [("train", k, f"rgb/rgb_{k}.png", f"ss/ss_{k}.png") for k in ("0001", "0002")]


def _cityscapes(root: Path) -> list[tuple]:
    files = []
    for i, (split, city) in enumerate((("train", "aachen"), ("train", "bochum"), ("val", "frankfurt"))):
        key = f"{city}/{city}_000000_00001{i}"
        image, label = (
            f"leftImg8bit/{split}/{key}_leftImg8bit.png",
            f"gtFine/{split}/{key}_gtFine_labelIds.png",
        )
        files.append((split, key, image, label))
        instance_ids = root / f"gtFine/{split}/{key}_gtFine_instanceIds.png"  # must be ignored
        write_gray(instance_ids, np.full((H, W), 26))
    return files


def _bdd100k(root: Path) -> list[tuple]:
    names = [
        ("train", "0a0a0b1a-7c39d841", ""),
        ("train", "0a1b2c3d-00000000", "_train_id"),
        ("val", "7d2f7975-e0c1c5a7", "_train_id"),
    ]
    return [
        (s, k, f"images/10k/{s}/{k}.jpg", f"labels/sem_seg/masks/{s}/{k}{end}.png") for s, k, end in names
    ]


def _mapillary(root: Path) -> list[tuple]:
    config = {"labels": [{"readable": n, "name": n.lower(), "color": [0, 0, 0]} for n in MAPILLARY_NAMES]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config_v1.2.json").write_text(json.dumps(config))
    names = (("train", "training", "AAA"), ("train", "training", "BBB"), ("val", "validation", "CCC"))
    return [(s, k, f"{folder}/images/{k}.jpg", f"{folder}/v1.2/labels/{k}.png") for s, folder, k in names]


def _acdc(root: Path) -> list[tuple]:
    write_rgb(root / "rgb_anon/fog/train_ref/GOPR00/GOPR00_frame_000000_ref_anon.png", 9)  # must be ignored
    files = []
    for i, (cond, split) in enumerate((("fog", "train"), ("night", "train"), ("rain", "val"))):
        seq, stem = f"GOPR0{i}", f"GOPR0{i}_frame_00000{i}"
        image = f"rgb_anon/{cond}/{split}/{seq}/{stem}_rgb_anon.png"
        label = f"gt/{cond}/{split}/{seq}/{stem}_gt_labelTrainIds.png"
        files.append((split, f"{cond}/{seq}/{stem}", image, label))
    return files


def _synthia_writer(path: Path, ids: np.ndarray) -> None:
    synthia_label(path, ids, seed=int(path.stem))


# dataset -> (files in the raw layout: (split, key, image, label) relative to raw, label pairs, label writer)
LAYOUTS: dict[str, tuple[Callable[[Path], list[tuple]], dict[int, int], LabelWriter]] = {
    "gta5": (_gta5, GTA5_PAIRS, write_palette),
    "synthia": (_synthia, SYNTHIA_PAIRS, _synthia_writer),
    "urbansyn": (_urbansyn, URBANSYN_PAIRS, write_gray),
    "cityscapes": (_cityscapes, CITYSCAPES_PAIRS, write_gray),
    "bdd100k": (_bdd100k, TRAINID_PAIRS, write_gray),
    "mapillary": (_mapillary, MAPILLARY_PAIRS, write_palette),
    "acdc": (_acdc, TRAINID_PAIRS, write_gray),
}
DATASETS = tuple(LAYOUTS)


def build(name: str, root: Path) -> RawFixture:
    """The tiny raw dataset ``name`` under ``root`` (Mapillary validation pairs in 2x2 blocks, for halving)."""
    files, pairs, write_label = LAYOUTS[name]
    fx = RawFixture(name, root)
    for seed, (split, key, image, label) in enumerate(files(root)):
        halve = name == "mapillary" and split == "val"
        fx.add(split, key, root / image, root / label, pairs, write_label, seed, halve=halve)
    return fx


@pytest.fixture(params=DATASETS)
def raw_dataset(request: pytest.FixtureRequest, tmp_path: Path) -> RawFixture:
    return build(request.param, tmp_path / "raw")


@pytest.fixture
def gta5(tmp_path: Path) -> RawFixture:
    return build("gta5", tmp_path / "raw")
