"""The 19 Cityscapes training classes on which every dataset is scored (ignore index 255)."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)

#: Cityscapes colour of each trainId (RGB), as in the official label table.
PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip


def colorize(label: np.ndarray) -> np.ndarray:
    """Map an (H, W) trainId array to an (H, W, 3) RGB image; ignored pixels are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[label]
