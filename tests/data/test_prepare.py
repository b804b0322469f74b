from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from typer.testing import CliRunner

from recyclelora.cli.main import app
from recyclelora.data.dataset import load_pair
from recyclelora.data.manifest import manifest_path, read_manifest
from recyclelora.data.prepare import SOURCES_KEY, prepare_dataset
from recyclelora.data.raw import RAW_DATASETS
from recyclelora.data.report import BadDataError
from recyclelora.io import sha256_file
from tests.data.conftest import DATASETS, RawFixture, build, write_gray, write_palette


def prepared_labels(fx: RawFixture, out: Path) -> dict[tuple[str, str], np.ndarray]:
    """(split, key) -> trainId label read back through the manifests, checking each row on the way."""
    found = {}
    for split in {split for split, _ in fx.expected}:
        for sample in read_manifest(manifest_path(out, fx.name, split)):
            prefix = out / "labels" / fx.name / split
            key = sample.label.relative_to(prefix).with_suffix("").as_posix()
            label = np.asarray(Image.open(sample.label))
            assert label.dtype == np.uint8 and label.shape == (sample.height, sample.width)
            assert sample.class_pixels == tuple(np.bincount(label.ravel(), minlength=256)[:19])
            assert sample.label_sha256 == sha256_file(sample.label)
            assert Image.open(sample.image).size == (sample.width, sample.height)
            found[(split, key)] = label
    return found


def test_prepare_writes_expected_trainids(raw_dataset: RawFixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = prepare_dataset(raw_dataset.name, raw_dataset.raw, out, workers=1)
    found = prepared_labels(raw_dataset, out)
    assert found.keys() == raw_dataset.expected.keys()
    for key, expected in raw_dataset.expected.items():
        np.testing.assert_array_equal(found[key], expected, err_msg=str(key))
    report = json.loads(result.report.read_text())
    assert report["skipped"] == 0 and report["files"] == []
    assert sum(report["samples"].values()) == len(raw_dataset.expected)


def test_image_paths_point_into_raw_except_halved_mapillary(tmp_path: Path) -> None:

    fx = build("mapillary", tmp_path / "raw")
    out = tmp_path / "out"
    prepare_dataset("mapillary", fx.raw, out, workers=1)
    train = pq_column(manifest_path(out, "mapillary", "train"), "image")
    assert all(Path(p).is_absolute() and Path(p).is_relative_to(fx.raw.resolve()) for p in train)
    assert pq_column(manifest_path(out, "mapillary", "val"), "image") == ["images/mapillary/val/CCC.jpg"]
    assert Image.open(out / "images/mapillary/val/CCC.jpg").size == (8, 6)

    prepare_dataset("mapillary", fx.raw, tmp_path / "full", split="val", workers=1, halve_mapillary_val=False)
    (sample,) = read_manifest(manifest_path(tmp_path / "full", "mapillary", "val"))
    assert (sample.width, sample.height) == (16, 12) and sample.image.is_relative_to(fx.raw.resolve())


def pq_column(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path).column(column).to_pylist()


@pytest.mark.parametrize("name", DATASETS)
def test_missing_folder_names_the_folder_and_the_source(name: str, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    spec = RAW_DATASETS[name]
    first = spec.images.root(raw, next(iter(spec.splits.values())))
    with pytest.raises(FileNotFoundError, match="expected the folder") as error:
        prepare_dataset(name, raw, tmp_path / "out", workers=1)
    assert str(first) in str(error.value) and spec.source in str(error.value)


def test_bad_arguments_name_the_field(gta5: RawFixture, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PrepareConfig.workers must be an integer >= 1 or null, got 0"):
        prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=0)
    with pytest.raises(ValueError, match="dataset='kitti' is unknown"):
        prepare_dataset("kitti", gta5.raw, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"(?s)raw=.*nowhere is not a folder.*images/\*\.png"):
        prepare_dataset("gta5", tmp_path / "nowhere", tmp_path / "out")


def test_prepare_one_split(tmp_path: Path) -> None:

    fx = build("cityscapes", tmp_path / "raw")
    (result,) = prepare_dataset("cityscapes", fx.raw, tmp_path / "out", split="val", workers=1).splits
    assert result.split == "val" and result.converted == 1
    assert not manifest_path(tmp_path / "out", "cityscapes", "train").exists()


def break_gta5(fx: RawFixture, case: str) -> list[tuple[str, str]]:
    """Damage frame 00002 of the GTAV fixture; return the expected (problem, file) records."""
    image, label = fx.raw / "images/00002.png", fx.raw / "labels/00002.png"
    if case == "corrupt image":
        image.write_bytes(image.read_bytes()[:60])
        return [("unreadable", str(image))]
    if case == "corrupt label":
        label.write_bytes(b"this is not a png")
        return [("unreadable", str(label))]
    if case == "size mismatch":
        write_palette(label, np.full((12, 15), 7))
        return [("size-mismatch", str(label))]
    if case == "missing partner":
        label.rename(fx.raw / "labels/00009.png")
        return [("missing-partner", str(image)), ("missing-partner", str(fx.raw / "labels/00009.png"))]
    if case == "wrong label format":
        Image.new("RGB", (16, 12)).save(label)
        return [("unreadable", str(label))]
    raise ValueError(case)


BAD_CASES = [
    "corrupt image",
    "corrupt label",
    "size mismatch",
    "missing partner",
    "wrong label format",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_is_skipped_and_reported(case: str, gta5: RawFixture, tmp_path: Path) -> None:
    expected = break_gta5(gta5, case)
    result = prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=1)
    report = json.loads((tmp_path / "out/gta5_report.json").read_text())
    assert [(f["problem"], f["file"]) for f in report["files"]] == expected
    assert all(f["dataset"] == "gta5" and f["split"] == "train" and f["detail"] for f in report["files"])
    assert report["skipped"] == len(expected) and result.splits[0].skipped == len(expected)
    found = prepared_labels(gta5, tmp_path / "out")
    assert sorted(found) == [("train", "00001"), ("train", "00003")]
    np.testing.assert_array_equal(found[("train", "00003")], gta5.expected[("train", "00003")])


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_raises_in_strict_mode(case: str, gta5: RawFixture, tmp_path: Path) -> None:
    (problem, file), *_ = break_gta5(gta5, case)
    with pytest.raises(BadDataError, match="--strict") as error:
        prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=1, strict=True)
    assert (error.value.record.problem.value, error.value.record.file) == (problem, file)
    assert file in str(error.value) and problem in str(error.value)
    assert not manifest_path(tmp_path / "out", "gta5", "train").exists()


def test_strict_mode_stops_a_parallel_run(gta5: RawFixture, tmp_path: Path) -> None:
    break_gta5(gta5, "size mismatch")
    with pytest.raises(BadDataError, match="size-mismatch"):
        prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=2, strict=True)


def test_a_split_without_usable_pairs_is_an_error(gta5: RawFixture, tmp_path: Path) -> None:
    for label in (gta5.raw / "labels").iterdir():
        write_gray(label, np.full((12, 15), 7))  # every label one column narrower than its image
    with pytest.raises(ValueError, match=r"no usable image/label pair in split\(s\) \['train'\]"):
        prepare_dataset("gta5", gta5.raw, tmp_path / "out", workers=1)
    assert len(json.loads((tmp_path / "out/gta5_report.json").read_text())["files"]) == 3


def test_rerun_reuses_intact_outputs_and_redoes_tampered_ones(gta5: RawFixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = prepare_dataset("gta5", gta5.raw, out, workers=1).splits[0]
    assert (first.converted, first.reused) == (3, 0)
    manifest = manifest_path(out, "gta5", "train")
    rows = read_manifest(manifest)

    second = prepare_dataset("gta5", gta5.raw, out, workers=1).splits[0]
    assert (second.converted, second.reused) == (0, 3)
    assert read_manifest(manifest) == rows

    tampered = out / "labels/gta5/train/00002.png"
    Image.fromarray(np.zeros((12, 16), dtype=np.uint8)).save(tampered)
    (out / "labels/gta5/train/00003.png").unlink()
    third = prepare_dataset("gta5", gta5.raw, out, workers=1).splits[0]
    assert (third.converted, third.reused) == (2, 1)
    assert read_manifest(manifest) == rows
    np.testing.assert_array_equal(np.asarray(Image.open(tampered)), gta5.expected[("train", "00002")])


@pytest.mark.parametrize("replaced", ["label", "image"])
def test_a_raw_file_replaced_by_an_older_one_is_converted_again(
    replaced: str, gta5: RawFixture, tmp_path: Path
) -> None:
    """A raw file swapped for another one dated before the prepared label (an unpacked archive, ``cp -p``,
    ``rsync -a`` keep old modification times) is not taken for the one the label was made from."""
    out = tmp_path / "out"
    assert prepare_dataset("gta5", gta5.raw, out, workers=1).splits[0].converted == 3
    raw = gta5.raw / f"{replaced}s/00002.png"
    if replaced == "label":
        expected = break_gta5(gta5, "size mismatch")
    else:
        Image.fromarray(np.zeros((12, 15, 3), dtype=np.uint8)).save(raw)
        expected = [("size-mismatch", str(gta5.raw / "labels/00002.png"))]
    written = out / "labels/gta5/train/00002.png"
    past = written.stat().st_mtime_ns - 3600 * 10**9
    os.utime(raw, ns=(past, past))
    rerun = prepare_dataset("gta5", gta5.raw, out, workers=1)
    assert (rerun.splits[0].converted, rerun.splits[0].reused, rerun.splits[0].skipped) == (0, 2, 1)
    assert [(record.problem.value, record.file) for record in rerun.bad.records] == expected


def test_a_label_records_the_raw_pair_it_was_made_from(gta5: RawFixture, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_dataset("gta5", gta5.raw, out, workers=1)
    sources = json.loads(Image.open(out / "labels/gta5/train/00001.png").info[SOURCES_KEY])
    assert sources == {
        "image": sha256_file(gta5.raw / "images/00001.png"),
        "label": sha256_file(gta5.raw / "labels/00001.png"),
    }


def test_halved_mapillary_rerun_checks_the_written_image(tmp_path: Path) -> None:

    fx = build("mapillary", tmp_path / "raw")
    out = tmp_path / "out"
    prepare_dataset("mapillary", fx.raw, out, split="val", workers=1)
    (out / "images/mapillary/val/CCC.jpg").unlink()
    (again,) = prepare_dataset("mapillary", fx.raw, out, split="val", workers=1).splits
    assert (again.converted, again.reused) == (1, 0) and (out / "images/mapillary/val/CCC.jpg").is_file()
    full = prepare_dataset("mapillary", fx.raw, out, split="val", workers=1, halve_mapillary_val=False)
    (halving_off,) = full.splits
    assert (halving_off.converted, halving_off.reused) == (1, 0)


def test_parallel_run_matches_serial_run(tmp_path: Path) -> None:

    fx = build("cityscapes", tmp_path / "raw")
    prepare_dataset("cityscapes", fx.raw, tmp_path / "serial", workers=1)
    prepare_dataset("cityscapes", fx.raw, tmp_path / "parallel", workers=2)
    for split in ("train", "val"):
        serial = pq_column(manifest_path(tmp_path / "serial", "cityscapes", split), "label_sha256")
        parallel = pq_column(manifest_path(tmp_path / "parallel", "cityscapes", split), "label_sha256")
        assert serial == parallel and len(serial) == (2 if split == "train" else 1)


def test_cli_prepare(gta5: RawFixture, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(
        app, ["data", "prepare", "gta5", "--raw", str(gta5.raw), "--out", str(out), "--workers", "1"]
    )
    assert ok.exit_code == 0, ok.output
    assert "report:" in ok.output and len(read_manifest(manifest_path(out, "gta5", "train"))) == 3

    break_gta5(gta5, "size mismatch")
    args = ["data", "prepare", "gta5", "--raw", str(gta5.raw), "--out", str(out), "--workers", "1"]
    skipped = runner.invoke(app, args)
    assert skipped.exit_code == 0 and "size-mismatch" in skipped.output and "00002.png" in skipped.output
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1 and "size-mismatch" in strict.output

    missing = runner.invoke(app, ["data", "prepare", "cityscapes", "--raw", str(gta5.raw), "--out", str(out)])
    assert missing.exit_code == 1 and "leftImg8bit" in missing.output
    bad_split = runner.invoke(app, [*args, "--split", "val"])
    assert bad_split.exit_code == 1 and "split='val'" in bad_split.output


def test_exif_rotated_raw_images_come_out_upright_with_their_labels(tmp_path: Path) -> None:
    """Raw images stored sideways with EXIF orientation 6, their labels sideways on the same stored grid: the
    prepared pairs read upright and aligned, as the upright originals do (halved validation pairs included)."""
    fx = build("mapillary", tmp_path / "raw")
    upright = prepare_dataset("mapillary", fx.raw, tmp_path / "upright", workers=1)
    expected = [[load_pair(sample) for sample in read_manifest(split.manifest)] for split in upright.splits]
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    for path in sorted(fx.raw.glob("*/images/*.jpg")) + sorted(fx.raw.glob("*/v1.2/labels/*.png")):
        with Image.open(path) as opened:
            stored = opened.transpose(Image.Transpose.ROTATE_90)
        if path.suffix == ".jpg":
            stored.save(path, quality=100, exif=exif)
        else:
            stored.save(path)
    rotated = prepare_dataset("mapillary", fx.raw, tmp_path / "rotated", workers=1)
    for pairs, split in zip(expected, rotated.splits, strict=True):
        for (want_image, want_label), sample in zip(pairs, read_manifest(split.manifest), strict=True):
            image, label = load_pair(sample)
            assert (sample.height, sample.width) == label.shape == want_label.shape == image.shape[:2]
            assert np.array_equal(label, want_label)
            assert np.abs(image.astype(int) - want_image).mean() < 12  # JPEG re-encoding only
