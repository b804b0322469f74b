"""``predict`` sees images as a viewer shows them: a 16-bit file gives the label map of its 8-bit version and an
EXIF-rotated JPEG the label map of its upright version, through the real command line and a tiny model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from tests.cli import SIZE, invoke, save_tiny_checkpoint, single_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def exif_rotated_jpeg(path: Path, upright: np.ndarray) -> Path:
    """``upright`` stored turned 90 degrees with EXIF orientation 6, as a phone held upright stores a photo."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return path


def test_16_bit_and_exif_rotated_files_get_the_label_maps_of_their_8_bit_upright_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (SIZE, 84, 3), dtype=np.uint8)
    grey = picture[:, :, 1]
    files = tmp_path / "in"
    files.mkdir()
    Image.fromarray(picture).save(files / "rgb8.png")
    cv2.imwrite(str(files / "rgb48.png"), picture[:, :, ::-1].astype(np.uint16) * 257)  # 16 bits per channel
    Image.fromarray(grey).save(files / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(files / "grey16.png")  # opens in mode I;16
    rotated = exif_rotated_jpeg(files / "rotated.jpg", picture)
    with Image.open(rotated) as opened:  # the reference: what Pillow's own exif_transpose shows
        assert opened.size == (SIZE, 84)
        ImageOps.exif_transpose(opened).save(files / "upright.png")
    model = save_tiny_checkpoint(tmp_path / "model.safetensors")
    result = invoke(
        "predict", files, "--model", model, "--out", tmp_path / "out", "--crop", SIZE, "--stride", 37
    )
    assert result.exit_code == 0, result.output

    def label_map(stem: str) -> np.ndarray:
        with Image.open(tmp_path / "out" / "pred" / f"{stem}.png") as opened:
            return np.asarray(opened)

    for sixteen, eight in (("rgb48", "rgb8"), ("grey16", "grey8"), ("rotated", "upright")):
        assert label_map(sixteen).shape == (SIZE, 84)
        assert np.array_equal(label_map(sixteen), label_map(eight)), (sixteen, eight)
    assert len(np.unique(label_map("rgb8"))) > 1  # the maps say something about the pictures
