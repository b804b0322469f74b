"""``predict`` sees images as a viewer shows them: a 16-bit file gives the label map of its 8-bit version and an
EXIF-rotated JPEG the label map of its upright version, through the real command line and a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from tests.cli import SIZE, invoke, save_tiny_checkpoint, single_thread
from tests.data.test_images import write_huge_png


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


#: Runs ``recyclelora-cli`` in this process and prints its exit code and peak resident memory (KiB) as JSON.
CLI_MEMORY = """
import json, resource, sys
from recyclelora.cli.main import app
try:
    app(sys.argv[1:], prog_name="recyclelora-cli")
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.slow
def test_predict_refuses_a_13000_pixel_square_png_without_allocating_it(tmp_path: Path) -> None:
    """The whole command, model loaded: on the 165 KB PNG that once made ``predict`` allocate 2 GB and then
    12.8 GB, its peak memory stays that of a run on a small image (the decoded image alone would be 169 MB)."""
    model = save_tiny_checkpoint(tmp_path / "model.safetensors")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((SIZE, 84, 3), np.uint8)).save(small)
    huge = write_huge_png(tmp_path / "huge.png")
    runs = {}
    for image in (small, huge):
        args = ["predict", image, "--model", model, "--out", tmp_path / image.stem, "--crop", SIZE]
        command = [sys.executable, "-c", CLI_MEMORY, *map(str, args)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
        runs[image.stem] = json.loads(run.stdout.strip().splitlines()[-1]) | {"stderr": run.stderr}
    assert runs["small"]["code"] == 0 and runs["huge"]["code"] == 1, runs
    assert "huge.png is too large to read: 13000 x 13000" in runs["huge"]["stderr"]
    assert runs["huge"]["maxrss"] < runs["small"]["maxrss"] + 64 * 1024, runs  # KiB
    assert not (tmp_path / "huge").exists()
