"""The whole segmentor from one typed config: backbone, how it is tuned (adapters, frozen, full), head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from recyclelora.adapters import Factors, inject_adapters
from recyclelora.adapters.inject import apply_factors
from recyclelora.digest import state_dict_sha256
from recyclelora.models.backbone import ViTBackbone
from recyclelora.models.config import ModelConfig
from recyclelora.models.heads import build_head
from recyclelora.models.segmentor import Segmentor


@dataclass
class BuiltSegmentor:
    """A freshly built segmentor, its adapters' initial factors (None unless ``adapters``) and the SHA-256 of
    the pretrained backbone state it was built on (before any adapter changed it)."""

    model: Segmentor
    init_factors: dict[str, Factors] | None
    backbone_sha256: str


def build_segmentor(
    config: ModelConfig,
    *,
    init_factors: dict[str, Factors] | None = None,
    cache_dir: str | Path | None = None,
    generator: torch.Generator | None = None,
    on_init_done: Callable[[str], None] | None = None,
) -> BuiltSegmentor:
    """Build the segmentor of ``config``.

    ``init_factors`` (from a checkpoint) are applied as they are, never recomputed; otherwise they are
    computed, through the init cache in ``cache_dir`` when one is given.
    """
    backbone = ViTBackbone(config.backbone)
    backbone_sha256 = state_dict_sha256(backbone.vit)
    factors = None
    if config.tuning == "adapters":
        if init_factors is not None:
            apply_factors(backbone.vit, init_factors, config.adapter.alpha)
            factors = init_factors
        else:
            factors = inject_adapters(
                backbone.vit, config.adapter, cache_dir=cache_dir, generator=generator, on_done=on_init_done
            )
    elif config.tuning == "frozen":
        backbone.vit.requires_grad_(False)
    head = build_head(config.head, backbone.out_channels)
    return BuiltSegmentor(Segmentor(backbone, head), factors, backbone_sha256)
