"""Decode heads: a light FPN head for CPU runs and Mask2Former (transformers' modules) for the recipe.

``import recyclelora.models.heads`` imports no torch: the heads are imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recyclelora._lazy import lazy_attributes, names_from
from recyclelora.models.heads.config import HeadConfig
from recyclelora.models.heads.registry import HEADS, Head

if TYPE_CHECKING:
    from recyclelora.models.heads.base import ParamGroups, SegHead, weight_decay_groups
    from recyclelora.models.heads.build import build_head
    from recyclelora.models.heads.light import LightHead
    from recyclelora.models.heads.mask2former import (
        Mask2FormerHead,
        Mask2FormerOutput,
        semantic_to_mask_labels,
    )

#: The heads' names are imported on first use: they need torch, and Mask2Former's need transformers (the
#: ``mask2former`` extra); the config and the registry do not.
__getattr__, __dir__ = lazy_attributes(
    __name__,
    names_from("recyclelora.models.heads.base", ("ParamGroups", "SegHead", "weight_decay_groups"))
    | names_from("recyclelora.models.heads.build", ("build_head",))
    | names_from("recyclelora.models.heads.light", ("LightHead",))
    | names_from(
        "recyclelora.models.heads.mask2former",
        ("Mask2FormerHead", "Mask2FormerOutput", "semantic_to_mask_labels"),
    ),
)


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
