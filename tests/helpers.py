"""Tiny models and configs the tests build (random weights, no hub access)."""

from __future__ import annotations

import timm
import torch

from recyclelora.adapters import AdapterConfig
from recyclelora.models import BackboneConfig, HeadConfig, ModelConfig
from recyclelora.train.config import TrainConfig

TINY_VIT = dict(embed_dim=48, depth=4, num_heads=2, init_values=1.0)


def tiny_vit(**overrides) -> torch.nn.Module:
    """A 2-block DINOv2-layout ViT with LayerScale 1.0, so blocks change the output measurably."""
    kwargs = dict(pretrained=False, img_size=28, embed_dim=48, depth=2, num_heads=2, init_values=1.0)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", **kwargs).eval()


def tiny_model_config(**overrides) -> ModelConfig:
    fields = dict(
        backbone=BackboneConfig(weights="none", img_size=56, model_kwargs=TINY_VIT),
        head=HeadConfig(kind="light", channels=32),
        adapter=AdapterConfig(rank_main=4, rank_sub=2),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_train_config(**overrides) -> TrainConfig:
    fields = dict(iterations=6, batch_size=2, lr=1e-3, log_every=1, checkpoint_every=3, num_workers=0)
    fields.update(overrides)
    return TrainConfig(**fields)
