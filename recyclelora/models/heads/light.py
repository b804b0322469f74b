"""A small FPN-style decode head with a pixel-wise cross-entropy loss, for CPU runs and smoke tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from recyclelora.data.classes import IGNORE_INDEX
from recyclelora.models.heads.base import SegHead


class LightHead(SegHead):
    """``logits = W_cls * ReLU(GN(conv3x3(sum_l up(W_l * f_l))))`` at the finest level's resolution.

    Every level ``f_l`` gets a 1x1 lateral projection to ``channels`` and is resized bilinearly to the size of
    the first (finest, nominally stride-4) map; sizes are never assumed to divide each other. GroupNorm, not
    BatchNorm: statistics do not depend on the batch, so small per-GPU batches and DDP give the same
    gradients as one process with the global batch.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 128) -> None:
        super().__init__(in_channels, num_classes)
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, kernel_size=1) for c in self.in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(_groups(channels), channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Return class logits ``(B, num_classes, h, w)`` at the finest feature map's size."""
        self.check_features(features)
        size = features[0].shape[-2:]
        fused = self.laterals[0](features[0])
        for lateral, feature in zip(self.laterals[1:], features[1:], strict=True):
            fused = fused + F.interpolate(lateral(feature), size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(fused))

    def loss(self, output: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Mean cross-entropy over labelled pixels, logits upsampled bilinearly to the label size.

        ``L = sum_{p labelled} -log softmax(z_p)[y_p] / max(1, #labelled)``: a crop with no labelled pixel
        gives 0 (and zero gradients) instead of NaN.
        """
        self.check_labels(labels)
        logits = F.interpolate(output, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        total = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX, reduction="sum")
        ce = total / (labels != IGNORE_INDEX).sum().clamp(min=1)
        return {"loss": ce, "loss_ce": ce}

    def semantic_logits(self, output: Tensor, size: tuple[int, int]) -> Tensor:
        """Logits resized bilinearly to ``size``."""
        return F.interpolate(output, size=size, mode="bilinear", align_corners=False)


def _groups(channels: int) -> int:
    """The largest of 32, 16, 8, 4, 2, 1 groups that divides ``channels``."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
