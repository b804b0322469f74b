"""Parquet manifests: one table per dataset and split, the single interface between data and training.

Columns: ``dataset``, ``split``, ``image``, ``label`` (paths; relative ones are relative to the manifest's
folder), ``height``, ``width``, ``class_pixels`` (19 per-class pixel counts of the trainId label) and
``label_sha256`` (checksum of the trainId PNG). Every real dataset and the embedded benchmark write this form.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recyclelora.data.classes import CLASS_NAMES, NUM_CLASSES
from recyclelora.errors import InvalidInputError, first_sentence
from recyclelora.io import atomic_path

MANIFEST_VERSION = 1

SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("image", pa.string()),
        ("label", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("class_pixels", pa.list_(pa.int64(), NUM_CLASSES)),
        ("label_sha256", pa.string()),
    ],
    metadata={
        b"recyclelora.manifest_version": str(MANIFEST_VERSION).encode(),
        b"recyclelora.classes": json.dumps(CLASS_NAMES).encode(),
    },
)


@dataclass(frozen=True)
class Sample:
    """One manifest row with its paths resolved to absolute ones."""

    dataset: str
    split: str
    image: Path
    label: Path
    height: int
    width: int
    class_pixels: tuple[int, ...]
    label_sha256: str


def manifest_path(root: str | os.PathLike[str], dataset: str, split: str) -> Path:
    """Where the manifest of ``dataset``/``split`` lives under a prepared output folder."""
    return Path(root) / f"{dataset}_{split}.parquet"


class ManifestError(InvalidInputError):
    """A manifest file that does not decode (corrupt or truncated); the message says how to restore it."""


def write_manifest(path: str | os.PathLike[str], rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the schema's columns) as a Parquet manifest with page checksums, atomically."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)
    return Path(path)


def read_manifest(path: str | os.PathLike[str]) -> list[Sample]:
    """Read a manifest and resolve its relative paths against the manifest's folder.

    Raises ``FileNotFoundError`` for a missing file, :class:`ManifestError` for one that does not decode (a
    changed byte anywhere fails: pages carry CRC-32 checksums, verified here) and ``ValueError`` for a table that
    is not a manifest of this version or that has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {path} does not exist: create it with `recyclelora-cli data prepare` "
            "or `recyclelora-cli data synth`"
        )
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        rows = table.to_pylist()
    except (OSError, ValueError, pa.ArrowException) as error:  # ArrowInvalid, UnicodeDecodeError: ValueError
        raise ManifestError(
            f"manifest {path} is corrupt ({first_sentence(error)}): restore it with `dvc checkout {path}`, or write "
            "it again (`dvc repro data`, `recyclelora-cli data prepare` or `recyclelora-cli data synth`)"
        ) from None
    version = (table.schema.metadata or {}).get(b"recyclelora.manifest_version")
    missing = set(SCHEMA.names) - set(table.column_names)
    if version != str(MANIFEST_VERSION).encode() or missing:
        raise InvalidInputError(
            f"{path} is not a recyclelora manifest of version {MANIFEST_VERSION} "
            f"(version {version!r}, missing columns {sorted(missing)}): prepare the dataset again"
        )
    if table.num_rows == 0:
        raise InvalidInputError(f"manifest {path} has no samples: check the dataset folder it was prepared from")
    base = path.parent
    return [
        Sample(
            dataset=row["dataset"],
            split=row["split"],
            image=_resolve(base, row["image"]),
            label=_resolve(base, row["label"]),
            height=row["height"],
            width=row["width"],
            class_pixels=tuple(row["class_pixels"]),
            label_sha256=row["label_sha256"],
        )
        for row in rows
    ]


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path
