"""Label values outside a dataset's table: GTAV writes them as 255 and keeps the frame (as the published
conversion does) and the report counts them; the other datasets still skip such frames as bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recyclelora.data import labelmaps
from recyclelora.data.labelmaps import LabelMap, build_label_map
from recyclelora.data.prepare import IGNORED_VALUES_KEY, prepare_dataset
from recyclelora.data.report import BadDataError
from tests.data.conftest import RawFixture, build
from tests.data.test_prepare import prepared_labels

# GTAV frame -> {raw value outside the Cityscapes id table: pixels}
UNKNOWN = {"00002": {40: 3, 250: 1}, "00003": {40: 2}}
EXPECTED_TOTALS = {
    "frames": 2,
    "pixels": 6,
    "values": {"40": {"frames": 2, "pixels": 5}, "250": {"frames": 1, "pixels": 1}},
}


def with_unknown_values(fx: RawFixture) -> RawFixture:
    for key, pixels in UNKNOWN.items():
        fx.put_values("train", key, pixels)
    return fx


def ignored_section(out: Path) -> dict:
    return json.loads((out / "gta5_report.json").read_text())["ignored_unknown_values"]


def expected_section(fx: RawFixture) -> dict:
    files = [
        {
            "split": "train",
            "file": str(fx.raw.resolve() / f"labels/{key}.png"),
            "pixels": {str(v): n for v, n in pixels.items()},
        }
        for key, pixels in UNKNOWN.items()
    ]
    return {**EXPECTED_TOTALS, "files": files}


@pytest.mark.parametrize("workers", [1, 2])
def test_gta5_values_outside_the_table_become_ignore_and_the_frame_is_kept(
    gta5: RawFixture, tmp_path: Path, workers: int
) -> None:
    with_unknown_values(gta5)
    out = tmp_path / "out"
    result = prepare_dataset("gta5", gta5.raw, out, workers=workers)
    found = prepared_labels(gta5, out)
    assert found.keys() == gta5.expected.keys()
    for key, expected in gta5.expected.items():
        np.testing.assert_array_equal(found[key], expected, err_msg=str(key))
    assert found[("train", "00002")].ravel()[:4].tolist() == [255] * 4
    (split,) = result.splits
    assert (split.converted, split.skipped, split.ignored) == (3, 0, 2)
    report = json.loads(result.report.read_text())
    assert report["skipped"] == 0 and report["files"] == [] and report["samples"] == {"train": 3}
    assert report["ignored_unknown_values"] == expected_section(gta5)
    label = Image.open(out / "labels/gta5/train/00002.png")
    assert json.loads(label.info[IGNORED_VALUES_KEY]) == {"40": 3, "250": 1}
    assert IGNORED_VALUES_KEY not in Image.open(out / "labels/gta5/train/00001.png").info


def test_a_rerun_counts_reused_frames_again_and_forgets_fixed_ones(gta5: RawFixture, tmp_path: Path) -> None:
    with_unknown_values(gta5)
    out = tmp_path / "out"
    prepare_dataset("gta5", gta5.raw, out, workers=1)
    first = ignored_section(out)
    (again,) = prepare_dataset("gta5", gta5.raw, out, workers=1).splits
    assert (again.converted, again.reused, again.ignored) == (0, 3, 2)
    assert ignored_section(out) == first

    path, values, write_label = gta5.labels[("train", "00002")]
    write_label(path, np.where(np.isin(values, [40, 250]), 7, values))  # the raw label is fixed
    (fixed,) = prepare_dataset("gta5", gta5.raw, out, workers=1).splits
    assert (fixed.converted, fixed.reused, fixed.ignored) == (1, 2, 1)
    section = ignored_section(out)
    assert (section["frames"], section["pixels"]) == (1, 2)
    assert section["values"] == {"40": {"frames": 1, "pixels": 2}}
    assert [Path(f["file"]).name for f in section["files"]] == ["00003.png"]


def test_strict_mode_keeps_gta5_frames_with_values_outside_the_table(
    gta5: RawFixture, tmp_path: Path
) -> None:
    with_unknown_values(gta5)
    result = prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=1, strict=True)
    assert result.splits[0].converted == 3 and ignored_section(tmp_path / "out") == expected_section(gta5)


def test_summary_caption_counts_the_ignored_values(gta5: RawFixture, tmp_path: Path) -> None:
    with_unknown_values(gta5)
    caption = str(prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=1).bad.summary().caption)
    assert "2 kept frame(s)" in caption and "[40, 250]" in caption and "6 pixels" in caption


def test_a_report_without_such_values_says_so(gta5: RawFixture, tmp_path: Path) -> None:
    prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=1)
    assert ignored_section(tmp_path / "out") == {"frames": 0, "pixels": 0, "values": {}, "files": []}


def test_cityscapes_values_outside_the_table_still_skip_the_frame(tmp_path: Path) -> None:
    fx = build("cityscapes", tmp_path / "raw")
    key = "aachen/aachen_000000_000010"
    fx.put_values("train", key, {40: 1})
    label = str(fx.labels[("train", key)][0])
    result = prepare_dataset("cityscapes", fx.raw, tmp_path / "out", workers=1)
    assert [(s.split, s.converted, s.skipped) for s in result.splits] == [("train", 1, 1), ("val", 1, 0)]
    report = json.loads(result.report.read_text())
    assert [(f["problem"], f["file"]) for f in report["files"]] == [("unknown-value", label)]
    assert "[40] (1 pixels)" in report["files"][0]["detail"]
    assert report["ignored_unknown_values"]["frames"] == 0
    with pytest.raises(BadDataError, match="unknown-value"):
        prepare_dataset("cityscapes", fx.raw, tmp_path / "strict", workers=1, strict=True)


def test_only_gta5_writes_unknown_values_as_ignore() -> None:
    assert [name for name, m in labelmaps.FIXED_LABEL_MAPS.items() if m.unknown_to_ignore] == ["gta5"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_unknown_counts_counts_pixels_per_value(dtype: type) -> None:
    values = np.array([[7, 40, 40], [250, 255, 0]], dtype=dtype)
    assert labelmaps.GTA5.unknown_counts(values) == {40: 2, 250: 1}
    assert labelmaps.CITYSCAPES.unknown_counts(values) == {40: 2, 250: 1, 255: 1}
    assert labelmaps.GTA5(values).tolist() == [[0, 255, 255], [255, 255, 255]]
    if dtype == np.uint16:
        assert labelmaps.SYNTHIA.unknown_counts(np.array([3, 300, 300], dtype=dtype)) == {300: 2}


def test_unknown_to_ignore_needs_255_at_unknown_values() -> None:
    lut = np.full(256, 255, dtype=np.uint8)
    lut[40] = 3
    with pytest.raises(ValueError, match="unknown_to_ignore needs lut = 255"):
        LabelMap("broken", lut, np.arange(256) < 34, unknown_to_ignore=True)
    lenient = build_label_map("ok", {7: 0}, range(34), unknown_to_ignore=True)
    assert lenient(np.array([7, 40], np.uint8)).tolist() == [0, 255]
