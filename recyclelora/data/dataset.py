"""A torch dataset over one or several manifests, with a seeded subset and reproducible augmentation.

Sample ``i`` of epoch ``e`` is transformed with ``np.random.default_rng([seed, e, i])``, so what a sample
looks like depends on (seed, epoch, index) only, never on the number of DataLoader workers or their order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from recyclelora.data.manifest import Sample, read_manifest
from recyclelora.data.transforms import SegmentationTransform

PathLike = str | os.PathLike[str]


def load_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Read a sample's RGB image (H, W, 3) and trainId label (H, W) as uint8 arrays, checking their sizes."""
    with Image.open(sample.image) as handle:
        image = np.asarray(handle.convert("RGB"))
    with Image.open(sample.label) as handle:
        if handle.mode not in ("L", "P"):
            raise ValueError(
                f"label {sample.label} has PIL mode {handle.mode!r}; trainId labels are 8-bit single-channel "
                "PNGs: prepare the dataset again"
            )
        label = np.asarray(handle)
    if label.shape != image.shape[:2]:
        raise ValueError(
            f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but image {sample.image} is "
            f"{image.shape[1]}x{image.shape[0]}: resize or drop this pair and prepare the dataset again"
        )
    return image, label


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples of the concatenated manifests (or a seeded random subset of them), transformed on access.

    Items are ``dict(image=FloatTensor (3, H, W), label=LongTensor (H, W), name=str, dataset=str)``.
    ``subset=N`` keeps N samples drawn without replacement by ``np.random.default_rng(seed)``; the kept
    positions in the concatenation are :attr:`indices` (sorted), to be recorded with a run.
    Call :meth:`set_epoch` before each epoch to vary the augmentation reproducibly.
    """

    def __init__(
        self,
        manifest_paths: PathLike | Sequence[PathLike],
        transform: SegmentationTransform,
        *,
        subset: int | None = None,
        seed: int = 0,
    ) -> None:
        paths = [manifest_paths] if isinstance(manifest_paths, (str, os.PathLike)) else list(manifest_paths)
        if not paths:
            raise ValueError("no manifest given: pass at least one manifest path")
        if seed < 0:
            raise ValueError(f"seed={seed} must be a non-negative integer")
        self.manifests: tuple[Path, ...] = tuple(Path(path) for path in paths)
        self.samples: tuple[Sample, ...] = tuple(
            sample for path in self.manifests for sample in read_manifest(path)
        )
        if subset is None:
            self.indices: tuple[int, ...] = tuple(range(len(self.samples)))
        elif not 1 <= subset <= len(self.samples):
            raise ValueError(
                f"subset={subset} must be between 1 and the {len(self.samples)} samples of "
                f"{[str(path) for path in self.manifests]}"
            )
        else:
            chosen = np.random.default_rng(seed).choice(len(self.samples), size=subset, replace=False)
            self.indices = tuple(int(index) for index in np.sort(chosen))
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``; call it before iterating the epoch's DataLoader."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.indices):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self.indices)} samples")
        sample = self.samples[self.indices[index]]
        image, label = load_pair(sample)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image_out, label_out = self.transform(image, label, rng)
        return {"image": image_out, "label": label_out, "name": sample.image.stem, "dataset": sample.dataset}
