"""Decode heads: a light FPN head for CPU runs and Mask2Former (transformers' modules) for the recipe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recyclelora._lazy import lazy_attributes, names_from
from recyclelora.errors import require_extra
from recyclelora.models.heads.base import HeadConfig, ParamGroups, SegHead, weight_decay_groups
from recyclelora.models.heads.light import LightHead
from recyclelora.models.heads.registry import HEADS, Head

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
    """Build the head of :data:`HEADS` that ``config.kind`` names over features of ``in_channels`` channels
    (finest first); a missing optional dependency raises a one-line error naming the extra to install."""
    head = HEADS[config.kind]
    if head.extra is not None:
        require_extra(*head.extra, f"The {head.label} head (model.head.kind: {head.name})")
    return head.build(config, in_channels)


__all__ = [
    "HEADS",
    "Head",
    "HeadConfig",
    "LightHead",
    "Mask2FormerHead",
    "Mask2FormerOutput",
    "ParamGroups",
    "SegHead",
    "build_head",
    "semantic_to_mask_labels",
    "weight_decay_groups",
]  # fmt: skip
