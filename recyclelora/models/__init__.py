"""Segmentation models: timm ViT backbones with a feature pyramid, decode heads, checkpoints."""

from recyclelora.models.backbone import BackboneConfig, ViTBackbone
from recyclelora.models.build import BuiltSegmentor, ModelConfig, build_segmentor, state_dict_sha256
from recyclelora.models.checkpoint import (
    CheckpointInfo,
    load_segmentor,
    read_checkpoint_info,
    save_segmentor,
)
from recyclelora.models.heads import HeadConfig, build_head
from recyclelora.models.merge import MergeResult, merge_checkpoint
from recyclelora.models.segmentor import Segmentor

__all__ = [
    "BackboneConfig", "BuiltSegmentor", "CheckpointInfo", "HeadConfig", "MergeResult", "ModelConfig", "Segmentor", "ViTBackbone",
    "build_head", "build_segmentor", "load_segmentor", "merge_checkpoint", "read_checkpoint_info", "save_segmentor",
    "state_dict_sha256",
]  # fmt: skip
