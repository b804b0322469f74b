"""Decode heads: a light FPN head for CPU runs and Mask2Former (transformers' modules) for the recipe."""

from __future__ import annotations

from collections.abc import Sequence

from recyclelora.models.heads.base import HeadConfig, ParamGroups, SegHead, weight_decay_groups
from recyclelora.models.heads.light import LightHead
from recyclelora.models.heads.mask2former import Mask2FormerHead, Mask2FormerOutput, semantic_to_mask_labels


def build_head(config: HeadConfig, in_channels: Sequence[int]) -> SegHead:
    """Build the head ``config.kind`` names over features of ``in_channels`` channels (finest first)."""
    if config.kind == "light":
        return LightHead(in_channels, num_classes=config.num_classes, channels=config.channels)
    return Mask2FormerHead(in_channels, config)


__all__ = [
    "HeadConfig", "LightHead", "Mask2FormerHead", "Mask2FormerOutput", "ParamGroups", "SegHead", "build_head",
    "weight_decay_groups", "semantic_to_mask_labels",
]  # fmt: skip
