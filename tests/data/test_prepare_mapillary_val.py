"""Mapillary validation pairs are stored as the published preprocessing stores them (Rein's
``tools/convert_datasets/mapillary_resize.py``): size (w // 2, h // 2), Pillow bicubic image saved as JPEG
with Pillow's defaults, Pillow nearest label."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recyclelora.data.manifest import manifest_path, read_manifest
from recyclelora.data.prepare import prepare_dataset
from tests.data.conftest import MAPILLARY_PAIRS, RawFixture, build, tile, write_palette, write_rgb

ODD = (15, 11)  # width, height: both odd, halved to 7 x 5


@pytest.fixture
def mapillary_odd(tmp_path: Path) -> RawFixture:
    """The Mapillary fixture with its validation pair CCC replaced by an odd-sized one."""
    fx = build("mapillary", tmp_path / "raw")
    write_rgb(fx.raw / "validation/images/CCC.jpg", seed=5, size=ODD)
    write_palette(fx.raw / "validation/v1.2/labels/CCC.png", tile(list(MAPILLARY_PAIRS), 5, ODD[::-1]))
    return fx


def nearest_half(values: np.ndarray) -> np.ndarray:
    """Pillow's nearest resize to (h // 2, w // 2), written out: pixel i reads floor((i + 0.5) * scale)."""
    h, w = values.shape
    rows = np.floor((np.arange(h // 2) + 0.5) * h / (h // 2)).astype(int)
    cols = np.floor((np.arange(w // 2) + 0.5) * w / (w // 2)).astype(int)
    return values[rows][:, cols]


def published_image(raw_image: Path) -> Image.Image:
    """The published halving of an image, before it is saved."""
    image = Image.open(raw_image)
    return image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BICUBIC)


def prepared_val(out: Path) -> tuple[Path, np.ndarray]:
    (sample,) = read_manifest(manifest_path(out, "mapillary", "val"))
    label = np.asarray(Image.open(sample.label))
    assert (sample.width, sample.height) == (label.shape[1], label.shape[0])
    return sample.image, label


def expected_label(fx: RawFixture) -> np.ndarray:
    raw = np.asarray(Image.open(fx.raw / "validation/v1.2/labels/CCC.png"))
    return nearest_half(np.vectorize(MAPILLARY_PAIRS.__getitem__, otypes=[np.uint8])(raw))


def test_default_stores_val_as_published_jpeg(mapillary_odd: RawFixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_dataset("mapillary", mapillary_odd.raw, out, split="val", workers=1)
    image, label = prepared_val(out)
    assert image == out / "images/mapillary/val/CCC.jpg"
    published = io.BytesIO()
    published_image(mapillary_odd.raw / "validation/images/CCC.jpg").save(published, format="JPEG")
    assert image.read_bytes() == published.getvalue()  # Pillow's defaults: quality 75, 4:2:0
    assert Image.open(image).size == (7, 5)
    np.testing.assert_array_equal(label, expected_label(mapillary_odd))


def test_png_format_stores_the_halved_image_losslessly(mapillary_odd: RawFixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_dataset("mapillary", mapillary_odd.raw, out, split="val", workers=1, mapillary_val_format="png")
    image, label = prepared_val(out)
    assert image == out / "images/mapillary/val/CCC.png"
    expected = np.asarray(published_image(mapillary_odd.raw / "validation/images/CCC.jpg").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(image)), expected)
    np.testing.assert_array_equal(label, expected_label(mapillary_odd))


def test_switching_format_converts_again(mapillary_odd: RawFixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_dataset("mapillary", mapillary_odd.raw, out, split="val", workers=1)
    (png,) = prepare_dataset(
        "mapillary", mapillary_odd.raw, out, split="val", workers=1, mapillary_val_format="png"
    ).splits
    (again,) = prepare_dataset(
        "mapillary", mapillary_odd.raw, out, split="val", workers=1, mapillary_val_format="png"
    ).splits
    assert (png.converted, png.reused, again.converted, again.reused) == (1, 0, 0, 1)


def test_training_images_are_not_halved(mapillary_odd: RawFixture, tmp_path: Path) -> None:
    prepare_dataset("mapillary", mapillary_odd.raw, tmp_path / "out", split="train", workers=1)
    samples = read_manifest(manifest_path(tmp_path / "out", "mapillary", "train"))
    assert {(s.width, s.height) for s in samples} == {(16, 12)}
    assert all(s.image.is_relative_to(mapillary_odd.raw.resolve()) for s in samples)


def test_unknown_format_names_the_choices(mapillary_odd: RawFixture, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mapillary_val_format='webp' is unknown.*\['jpeg', 'png'\]"):
        prepare_dataset("mapillary", mapillary_odd.raw, tmp_path / "out", mapillary_val_format="webp")
