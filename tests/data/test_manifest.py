"""Manifests: a changed byte anywhere is an error naming the file and how to restore it, never other rows."""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recyclelora.data.classes import NUM_CLASSES
from recyclelora.data.manifest import SCHEMA, ManifestError, read_manifest, write_manifest

ROWS = [
    {
        "dataset": "d", "split": "val", "image": f"d/val/s{i}.png", "label": f"d/val/s{i}_label.png",
        "height": 56, "width": 84, "class_pixels": list(range(NUM_CLASSES)), "label_sha256": f"{i:064x}",
    }
    for i in range(3)
]  # fmt: skip


def body_end(data: bytes) -> int:
    """Where the footer (file metadata) starts: after it come its 4-byte length and the magic ``PAR1``."""
    return len(data) - 8 - struct.unpack("<I", data[-8:-4])[0]


def test_a_byte_changed_in_the_middle_is_an_error_never_other_rows(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "d_val.parquet", ROWS)
    data = path.read_bytes()
    expected = read_manifest(path)
    offsets = range(4, body_end(data), 5)  # every fifth byte of the column chunks (each read takes ~20 ms)
    errors = 0
    for offset in offsets:  # the footer stays intact
        corrupt = bytearray(data)
        corrupt[offset] ^= 0xFF
        path.write_bytes(corrupt)
        try:
            assert read_manifest(path) == expected, f"byte {offset} changed the rows silently"
        except ManifestError as error:
            message = str(error)
            assert "\n" not in message and message.startswith(f"manifest {path} is corrupt (")
            assert f"restore it with `dvc checkout {path}`" in message and "`dvc repro data`" in message
            errors += 1
    assert errors > len(offsets) // 2  # most bytes matter; the rest (padding, unused bits) do not


def test_a_truncated_manifest_names_the_file(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "d_val.parquet", ROWS)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ManifestError, match=f"manifest {path} is corrupt"):
        read_manifest(path)


def test_a_manifest_written_without_checksums_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS, schema=SCHEMA), path)
    assert [sample.label.name for sample in read_manifest(path)] == [f"s{i}_label.png" for i in range(3)]
