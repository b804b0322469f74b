"""The up-front data check: every kind of bad sample is reported by file, the CLI, the cache of passes."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recyclelora.data.check import (
    CHECK_VERSION,
    DataCheckError,
    cache_file,
    check_manifest,
    default_check_cache,
    ensure_checked,
)
from recyclelora.io import sha256_file
from tests.cli import assert_user_error, invoke, write_dataset

H, W = 8, 12


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Three clean samples (labels hold class ids and the ignore index), files ``d/val/s{0,1,2}[_label].png``."""
    return write_dataset(tmp_path, "d", "val", ["s0", "s1", "s2"], seed=0, height=H, width=W)


def _truncate(path: Path, image_format: str) -> None:
    """Re-encode ``path`` as ``image_format`` and cut the pixel data short (its header still opens)."""
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format=image_format)
    path.write_bytes(buffer.getvalue()[:-40])


def _write_label(path: Path, label: np.ndarray) -> None:
    Image.fromarray(label.astype(np.uint8)).save(path)


def _out_of_range(path: Path) -> None:
    label = np.zeros((H, W), dtype=np.uint8)
    label[0, :3] = (19, 200, 255)  # 255 (ignored) is valid
    _write_label(path, label)


BREAKAGES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "truncated png": ("s1.png", lambda path: _truncate(path, "PNG"), "truncated"),
    "truncated jpeg": ("s1.png", lambda path: _truncate(path, "JPEG"), "truncated"),
    "corrupt label": ("s1_label.png", lambda path: path.write_bytes(b"not a png"), "cannot identify image"),
    "size mismatch": (
        "s1_label.png",
        lambda path: _write_label(path, np.zeros((H, W - 2))),
        f"is {W - 2}x{H} but image",
    ),
    "id out of range": ("s1_label.png", _out_of_range, "holds ids [19, 200] (2 pixels) outside 0..18"),
}


def test_a_clean_manifest_passes(manifest: Path) -> None:
    report = check_manifest(manifest, workers=2, progress=False)
    assert report.ok and report.samples == 3 and report.bad == ()
    assert report.manifest_sha256 == sha256_file(manifest)
    assert report.summary() == f"data check: the 3 samples of {manifest} are good"


@pytest.mark.parametrize("breakage", BREAKAGES.values(), ids=list(BREAKAGES))
def test_each_kind_of_bad_sample_is_reported_naming_its_file(
    manifest: Path, breakage: tuple[str, Callable[[Path], None], str]
) -> None:
    name, damage, problem = breakage
    broken = manifest.parent / "d/val" / name
    damage(broken)
    report = check_manifest(manifest, workers=2, progress=False)
    assert [bad.row for bad in report.bad] == [1]
    assert str(broken) in report.bad[0].problem and problem in report.bad[0].problem, report.bad[0].problem
    summary = report.summary()
    assert summary.startswith(f"data check: 1 of 3 samples of {manifest} are bad: row 1: ")
    assert "\n" not in summary and problem in summary


def test_every_bad_sample_is_found_and_the_summary_lists_twenty(tmp_path: Path) -> None:
    stems = [f"s{i:02d}" for i in range(23)]
    manifest = write_dataset(tmp_path, "d", "val", stems, seed=1, height=H, width=W)
    for stem in stems[1:]:
        (tmp_path / f"d/val/{stem}_label.png").write_bytes(b"")
    report = check_manifest(manifest, workers=4, progress=False)
    assert [bad.row for bad in report.bad] == list(range(1, 23))  # all of them, in row order
    summary = report.summary()
    assert summary.startswith(f"data check: 22 of 23 samples of {manifest} are bad: row 1: ")
    assert "s20_label.png" in summary and "s21_label.png" not in summary and summary.endswith("; and 2 more")


def test_cli_exits_1_with_one_line_naming_the_bad_file(manifest: Path, tmp_path: Path) -> None:
    clean = write_dataset(tmp_path, "e", "val", ["t0"], seed=2, height=H, width=W)
    _out_of_range(tmp_path / "d/val/s2_label.png")
    result = invoke("data", "check", clean, manifest, "--workers", "2", "--cache-dir", tmp_path / "cache")
    assert_user_error(result, f"data check: 1 of 3 samples of {manifest} are bad: row 2: label")
    assert "s2_label.png holds ids [19, 200]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    cache = tmp_path / "cache"
    assert list(cache.iterdir()) == [cache_file(clean, sha256_file(clean), cache)]  # the clean one only


def test_cli_exits_0_on_clean_data_and_records_the_pass(manifest: Path, tmp_path: Path) -> None:
    result = invoke("data", "check", manifest, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert f"the 3 samples of {manifest} are good" in " ".join(result.stdout.split())
    assert cache_file(manifest, sha256_file(manifest), tmp_path / "cache").is_file()


def test_a_passed_check_is_cached_until_the_manifest_changes(manifest: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (first,) = ensure_checked([manifest], cache, progress=False)
    record = json.loads(cache_file(manifest, first.manifest_sha256, cache).read_text())
    assert record == {
        "check_version": CHECK_VERSION,
        "manifest": str(manifest.resolve()),
        "manifest_sha256": sha256_file(manifest),
        "samples": 3,
    }
    _truncate(tmp_path / "d/val/s0.png", "PNG")  # after the pass: the cache trusts the files
    assert ensure_checked([manifest], cache, progress=False) == ()
    table = pq.read_table(manifest)
    pq.write_table(table.take([2, 1, 0]), manifest)  # an edited manifest is checked again
    with pytest.raises(DataCheckError, match=r"^data check: 1 of 3 samples .* row 2: cannot read .*s0\.png"):
        ensure_checked([manifest], cache, progress=False)


def test_ensure_checked_reports_every_bad_manifest_and_records_none(manifest: Path, tmp_path: Path) -> None:
    other = write_dataset(tmp_path, "e", "val", ["t0", "t1"], seed=2, height=H, width=W)
    (tmp_path / "d/val/s0_label.png").write_bytes(b"")
    (tmp_path / "e/val/t1.png").write_bytes(b"")
    with pytest.raises(DataCheckError) as raised:
        ensure_checked([manifest, other], tmp_path / "cache", progress=False)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2 and "s0_label.png" in lines[0] and "t1.png" in lines[1]
    assert not (tmp_path / "cache").exists()


def test_the_default_cache_follows_recyclelora_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECYCLELORA_CACHE", str(tmp_path))
    assert default_check_cache() == tmp_path / "data-check"
