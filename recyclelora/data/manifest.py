"""Parquet manifests: one table per dataset and split, the single interface between data and training.

Columns: ``dataset``, ``split``, ``image``, ``label`` (paths; relative ones are relative to the manifest's
folder), ``height``, ``width``, ``class_pixels`` (pixel count of each class of the label, one per class) and
``label_sha256`` (checksum of the class-id PNG). The schema's metadata names the dataset's class set
(:class:`~recyclelora.data.classes.ClassSet`: names and colours; the 19 Cityscapes classes by default).
Every dataset, the embedded benchmark and custom ones, writes this form.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recyclelora.data.classes import CITYSCAPES_CLASSES, CLASS_NAMES, ClassSet, same_classes
from recyclelora.errors import InvalidInputError, first_sentence
from recyclelora.io import atomic_path

MANIFEST_VERSION = 1
VERSION_KEY = b"recyclelora.manifest_version"
CLASSES_KEY = b"recyclelora.classes"
PALETTE_KEY = b"recyclelora.palette"

SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("image", pa.string()),
        ("label", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("class_pixels", pa.list_(pa.int64())),
        ("label_sha256", pa.string()),
    ],
    metadata={VERSION_KEY: str(MANIFEST_VERSION).encode(), CLASSES_KEY: json.dumps(CLASS_NAMES).encode()},
)
#: Digest of the label map the labels were written through (:meth:`~recyclelora.data.labelmaps.LabelMap.digest`).
LABEL_MAP_KEY = "recyclelora.label_map"


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


def write_manifest(
    path: str | os.PathLike[str],
    rows: list[dict],
    classes: ClassSet = CITYSCAPES_CLASSES,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``rows`` (dicts with the schema's columns) of a dataset labelled with ``classes`` as a Parquet
    manifest with page checksums, atomically; ``metadata`` adds string entries to its schema."""
    wrong = next((row for row in rows if len(row["class_pixels"]) != len(classes)), None)
    if wrong is not None:
        raise ValueError(f"{wrong['label']}: {len(wrong['class_pixels'])} class pixel counts for {len(classes)} classes")
    metadata = {
        **{key.encode(): value.encode() for key, value in (metadata or {}).items()},
        VERSION_KEY: str(MANIFEST_VERSION).encode(),
        CLASSES_KEY: json.dumps(classes.names).encode(),
        PALETTE_KEY: json.dumps([list(c) for c in classes.palette]).encode(),
    }
    table = pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(metadata))
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
    version = (table.schema.metadata or {}).get(VERSION_KEY)
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


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string entries of a manifest's schema metadata (the Parquet footer only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist: prepare its dataset first")
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ManifestError(f"manifest {path} is corrupt ({first_sentence(error)}): prepare it again") from None
    return {key.decode(): value.decode() for key, value in metadata.items() if key != b"ARROW:schema"}


def read_classes(path: str | os.PathLike[str]) -> ClassSet:
    """The class set a manifest's labels use, from its schema (Cityscapes' colours for a manifest written
    before palettes were recorded, which always holds the Cityscapes classes)."""
    metadata = read_metadata(path)
    names = json.loads(metadata.get(CLASSES_KEY.decode(), "null"))
    if names is None:
        raise InvalidInputError(f"{path} names no class set: it is not a recyclelora manifest; prepare it again")
    palette = metadata.get(PALETTE_KEY.decode())
    if palette is None and tuple(names) == CLASS_NAMES:
        return CITYSCAPES_CLASSES
    return ClassSet.of(names, None if palette is None else json.loads(palette))


def common_classes(paths: Sequence[str | os.PathLike[str]], what: str) -> ClassSet:
    """The one class set of the manifests ``paths`` (e.g. a run's training and validation data, named ``what``
    in the message); raises when two of them differ."""
    return same_classes({str(p): read_classes(p) for p in paths}, what)


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path
