"""How a dataset lies on disk as distributed: folders, file patterns, pairing keys and label decoding."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recyclelora.errors import InvalidInputError

if TYPE_CHECKING:  # the readers import them: the dataset table stays light for the CLI's --help
    import numpy as np

SPLIT = "{split}"


def read_index_png(path: Path) -> np.ndarray:
    """Class values of a label image as stored: grey levels (mode L) or palette indices (mode P), exactly
    (:func:`recyclelora.data.images.read_label`)."""
    from recyclelora.data.images import read_label

    return read_label(path)


def read_red_channel_png16(path: Path) -> np.ndarray:
    """First (red) channel of a 16-bit multi-channel PNG, as uint16 (SYNTHIA's class ids).

    Pillow reduces 16-bit colour PNGs to 8 bits, so OpenCV decodes it, after Pillow has checked its size
    from the header (:func:`recyclelora.data.images.open_image`); OpenCV orders channels BGR(A), so red is
    channel 2. Like every label, it is read as stored, without an orientation of its own.
    """
    import cv2
    import numpy as np

    from recyclelora.data.images import ImageFileError, open_image

    with open_image(path):
        pass
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if values is None:
        raise ImageFileError(f"label {path} cannot be decoded as PNG: restore or replace it")
    if values.dtype != np.uint16 or values.ndim != 3 or values.shape[2] < 3:
        raise ImageFileError(
            f"label {path} is a {values.dtype} array of shape {values.shape}, expected a 16-bit PNG with 3 or 4 "
            "channels (SYNTHIA's GT/LABELS)"
        )
    return values[:, :, 2]


@dataclass(frozen=True)
class FileSet:
    """The files of one kind (images or labels) of a split: ``<raw>/<folder>/<pattern>``.

    ``{split}`` in ``folder`` or ``pattern`` stands for the raw split folder name. A file's pairing key is
    its path below ``folder`` without the ``{split}`` part of ``pattern``, with the first matching ending of
    ``suffixes`` and a leading ``prefix`` removed from its name (``fog/GOPR0475/GOPR0475_frame_000041``).
    """

    folder: str
    pattern: str
    suffixes: tuple[str, ...]
    prefix: str = ""

    def root(self, raw: Path, raw_split: str) -> Path:
        return raw / self.folder.replace(SPLIT, raw_split)

    def describe(self, raw_split: str) -> str:
        return f"{self.folder.replace(SPLIT, raw_split)}/{self.pattern.replace(SPLIT, raw_split)}"

    def collect(self, raw: Path, raw_split: str) -> dict[str, Path]:
        """Pairing key -> file; where two files give one key, the earlier suffix in ``suffixes`` wins."""
        root = self.root(raw, raw_split)
        parts = self.pattern.split("/")
        dropped = {i for i, part in enumerate(parts) if part == SPLIT}
        found: dict[str, tuple[int, Path]] = {}
        for path in root.glob(self.pattern.replace(SPLIT, raw_split)):
            if not path.is_file():
                continue
            rel = [p for i, p in enumerate(path.relative_to(root).parts) if i not in dropped]
            name = rel[-1]
            rank = next((i for i, s in enumerate(self.suffixes) if name.endswith(s)), None)
            if rank is None:
                continue
            name = name[: len(name) - len(self.suffixes[rank])]
            name = name.removeprefix(self.prefix)
            key = "/".join([*rel[:-1], name])
            if key not in found or rank < found[key][0]:
                found[key] = (rank, path)
        return {key: path for key, (_, path) in sorted(found.items())}


@dataclass(frozen=True)
class RawDataset:
    """A dataset as distributed: where to get it, its splits (ours -> raw folder name) and its files."""

    name: str
    source: str
    splits: Mapping[str, str]
    images: FileSet
    labels: FileSet
    read_label: Callable[[Path], np.ndarray] = read_index_png

    def files(self, split: str) -> tuple[FileSet, FileSet]:
        """The image and label files of ``split`` (ours), as ``(images, labels)``."""
        return self.images, self.labels

    def layout(self) -> str:
        """The expected layout, one line per split and kind, for messages."""
        return "\n".join(
            f"  <raw>/{files.describe(raw_split)}"
            for split, raw_split in self.splits.items()
            for files in self.files(split)
        )

    def check_layout(self, raw: Path, split: str) -> None:
        """Raise ``FileNotFoundError`` naming the missing folder, the expected layout and the source."""
        if split not in self.splits:
            raise InvalidInputError(f"{self.name} has no split {split!r}: choose one of {list(self.splits)}")
        for files in self.files(split):
            root = files.root(raw, self.splits[split])
            if not root.is_dir():
                raise FileNotFoundError(
                    f"{self.name}: expected the folder {root} ({files.describe(self.splits[split])} below the "
                    f"raw folder {raw}). The {self.name} layout is:\n{self.layout()}\n"
                    f"Get the dataset from {self.source}."
                )
