"""Segmentation models: timm ViT backbones with a feature pyramid, decode heads, checkpoints.

The names below are imported on first use, so light submodules (``recyclelora.models.merge``'s constants,
the CLI's ``--help``) do not import torch and timm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recyclelora._lazy import lazy_attributes, names_from

__all__ = [
    "BackboneConfig", "BuiltSegmentor", "CheckpointInfo", "HeadConfig", "MergeResult", "ModelConfig", "Segmentor", "ViTBackbone",
    "build_head", "build_segmentor", "merge_checkpoint", "read_checkpoint_info", "save_segmentor",
    "state_dict_sha256",
]  # fmt: skip

__getattr__, __dir__ = lazy_attributes(
    __name__,
    names_from("recyclelora.models.backbone", ("ViTBackbone",))
    | names_from("recyclelora.models.backbone_config", ("BackboneConfig",))
    | names_from("recyclelora.models.build", ("BuiltSegmentor", "build_segmentor"))
    | names_from("recyclelora.digest", ("state_dict_sha256",))
    | names_from("recyclelora.models.config", ("ModelConfig",))
    | names_from("recyclelora.models.checkpoint", (
        "CheckpointInfo", "read_checkpoint_info", "save_segmentor",
    ))
    | names_from("recyclelora.models.heads", ("HeadConfig", "build_head"))
    | names_from("recyclelora.models.merge", ("MergeResult", "merge_checkpoint"))
    | names_from("recyclelora.models.segmentor", ("Segmentor",)),
)  # fmt: skip

if TYPE_CHECKING:
    from recyclelora.digest import state_dict_sha256
    from recyclelora.models.backbone import BackboneConfig, ViTBackbone
    from recyclelora.models.build import BuiltSegmentor, build_segmentor
    from recyclelora.models.checkpoint import (
        CheckpointInfo,
        read_checkpoint_info,
        save_segmentor,
    )
    from recyclelora.models.config import ModelConfig
    from recyclelora.models.heads import HeadConfig, build_head
    from recyclelora.models.merge import MergeResult, merge_checkpoint
    from recyclelora.models.segmentor import Segmentor
