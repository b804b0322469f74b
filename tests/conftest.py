"""Shared fixtures: tiny randomly initialised timm ViTs (no hub access)."""

from __future__ import annotations

import pytest
import timm
import torch


def tiny_vit(**overrides) -> torch.nn.Module:
    """A 2-block DINOv2-layout ViT with LayerScale 1.0, so blocks change the output measurably."""
    kwargs = dict(pretrained=False, img_size=28, embed_dim=48, depth=2, num_heads=2, init_values=1.0)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", **kwargs).eval()


@pytest.fixture
def vit() -> torch.nn.Module:
    return tiny_vit()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
