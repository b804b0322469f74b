"""The whole segmentor from one typed config: backbone, how it is tuned (adapters, frozen, full), head."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from recyclelora.adapters import AdapterConfig, Factors, inject_adapters
from recyclelora.adapters.cache import tensor_sha256
from recyclelora.adapters.inject import apply_factors
from recyclelora.models.backbone import BackboneConfig, ViTBackbone
from recyclelora.models.heads import HeadConfig, build_head
from recyclelora.models.segmentor import Segmentor
from recyclelora.validation import validate_fields

Tuning = Literal["adapters", "frozen", "full"]
#: Backbone settings added after checkpoints were first written, at the values those checkpoints used.
LEGACY_BACKBONE: dict[str, str] = {"pyramid": "learned", "embed_resample": "pinv"}


@dataclass(frozen=True)
class ModelConfig:
    """``tuning``: ``adapters`` trains the adapters of ``adapter`` (the backbone is otherwise frozen),
    ``frozen`` trains no backbone parameter, ``full`` trains all of them. Neck and head always train."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    tuning: Tuning = "adapters"
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
        validate_fields(self, "model")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": asdict(self.backbone) | {"out_indices": _list(self.backbone.out_indices)},
            "head": asdict(self.head),
            "tuning": self.tuning,
            "adapter": self.adapter.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config of :meth:`to_dict`; keys that older checkpoints lack get the behaviour they were
        trained with (:data:`LEGACY_BACKBONE`), not today's defaults."""
        return cls(
            backbone=BackboneConfig(**(LEGACY_BACKBONE | data["backbone"])),
            head=HeadConfig(**data["head"]),
            tuning=data["tuning"],
            adapter=AdapterConfig(**data["adapter"]),
        )


def _list(value: tuple[int, ...] | None) -> list[int] | None:
    return None if value is None else list(value)


@dataclass
class BuiltSegmentor:
    """A freshly built segmentor, its adapters' initial factors (None unless ``adapters``) and the SHA-256 of
    the pretrained backbone state it was built on (before any adapter changed it)."""

    model: Segmentor
    init_factors: dict[str, Factors] | None
    backbone_sha256: str


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over the sorted names and per-tensor hashes of a module's state dict."""
    entries = {name: tensor_sha256(tensor) for name, tensor in module.state_dict().items()}
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


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
