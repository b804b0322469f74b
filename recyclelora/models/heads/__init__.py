"""Decode heads: a light FPN head for CPU runs and Mask2Former (transformers' modules) for the recipe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recyclelora._lazy import lazy_attributes, names_from
from recyclelora.errors import require_extra
from recyclelora.models.heads.base import HeadConfig, ParamGroups, SegHead, weight_decay_groups
from recyclelora.models.heads.light import LightHead

if TYPE_CHECKING:
    from recyclelora.models.heads.mask2former import (
        Mask2FormerHead,
        Mask2FormerOutput,
        semantic_to_mask_labels,
    )

#: The Mask2Former names are imported on first use: they need transformers (the ``mask2former`` extra).
__getattr__, __dir__ = lazy_attributes(
    __name__,
    names_from(
        "recyclelora.models.heads.mask2former",
        ("Mask2FormerHead", "Mask2FormerOutput", "semantic_to_mask_labels"),
    ),
)


def build_head(config: HeadConfig, in_channels: Sequence[int]) -> SegHead:
    """Build the head ``config.kind`` names over features of ``in_channels`` channels (finest first)."""
    if config.kind == "light":
        return LightHead(in_channels, num_classes=config.num_classes, channels=config.channels)
    require_extra("transformers", "mask2former", "The Mask2Former head (model.head.kind: mask2former)")
    from recyclelora.models.heads.mask2former import Mask2FormerHead

    return Mask2FormerHead(in_channels, config)


__all__ = [
    "HeadConfig", "LightHead", "Mask2FormerHead", "Mask2FormerOutput", "ParamGroups", "SegHead", "build_head",
    "weight_decay_groups", "semantic_to_mask_labels",
]  # fmt: skip
