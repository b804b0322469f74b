"""benchmarks/bench_datapath.py's frames are GTAV's layout and format, PNGs of megabytes, and prepare back
to the scene they were drawn from (the mmseg comparison itself needs mmseg's own environment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bench_datapath import GTAV_SIZE, write_gtav_frames
from recyclelora.data.manifest import read_manifest
from recyclelora.data.prepare import prepare_dataset
from recyclelora.data.synth import render_image
from recyclelora.data.synth_config import SOURCE_DOMAIN


def test_frames_are_gtav_shaped_and_prepare_to_their_scene(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_gtav_frames(raw, 1, noise=1.0)
    with Image.open(raw / "images/00001.png") as image, Image.open(raw / "labels/00001.png") as label:
        assert (image.size, image.mode, label.size, label.mode) == (GTAV_SIZE, "RGB", GTAV_SIZE, "P")
    assert 1.5e6 < (raw / "images/00001.png").stat().st_size < 4e6  # a noisy render, not flat colour
    result = prepare_dataset("gta5", raw, tmp_path / "prepared", workers=1)
    assert result.splits[0].converted == 1 and not result.bad.records
    (sample,) = read_manifest(result.splits[0].manifest)
    with Image.open(sample.label) as prepared:
        train_ids = np.asarray(prepared)
    expected = render_image(0, SOURCE_DOMAIN, "train", 0, *GTAV_SIZE)[1]
    assert np.array_equal(train_ids, expected)  # the ids written map back to the scene's trainIds
    assert len(np.unique(expected)) >= 8  # a street scene of many classes
