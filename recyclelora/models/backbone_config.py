"""The backbone's config: which timm ViT, which weights, which blocks feed the pyramid. Imports no torch, so the
model name is checked against timm's registry when the backbone is built
(:class:`recyclelora.models.backbone.ViTBackbone`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from recyclelora.errors import InvalidInputError
from recyclelora.models.sources import CHECKPOINT_SUFFIXES, WEIGHT_SOURCES, EmbedResample, check_source
from recyclelora.validation import validate_fields

#: Pyramid scale factors applied to the patch-stride feature maps, finest first.
PYRAMID_SCALES: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
Pyramid = Literal["interpolate", "learned"]
#: create_model arguments the config sets itself, so model_kwargs may not.
_RESERVED_KWARGS = frozenset(
    {
        "pretrained",
        "num_classes",
        "img_size",
        "patch_size",
        "dynamic_img_size",
        "dynamic_img_pad",
        "drop_path_rate",
    }
)


@dataclass(frozen=True)
class BackboneConfig:
    """Which timm ViT to build, which weights to load into it and which blocks feed the pyramid."""

    name: str = field(default="vit_small_patch14_dinov2", metadata={"help": "timm model name of a ViT"})
    weights: str = field(
        default="embedded",
        metadata={
            "help": ", ".join(
                f"'{source.name}' ({source.description}{'; needs ' + source.needs if source.needs else ''})"
                for source in WEIGHT_SOURCES.values()
            )
            + f" or a {'/'.join(CHECKPOINT_SUFFIXES)} file; converted once by stage weights"
        },
    )
    img_size: int = field(
        default=224,
        metadata={
            "help": "position-grid size the weights are kept at (DINOv2's own: 518 = 37 x 14); inputs of any "
            "multiple of the patch are resampled to it on the fly",
            "ge": 1,
        },
    )
    patch_size: int | None = field(
        default=None,
        metadata={"help": "null keeps the model's; e.g. 16 resamples a patch-14 kernel", "ge": 1},
    )
    out_indices: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "4 increasing blocks feeding the pyramid; null = evenly spaced up to the last (2, 5, 8, "
            "11 of 12)",
            "ge": 0,
        },
    )
    drop_path_rate: float = field(
        default=0.0, metadata={"help": "stochastic depth rate of the ViT blocks", "ge": 0, "lt": 1}
    )
    pyramid: Pyramid = field(
        default="interpolate",
        metadata={
            "help": "interpolate (parameter-free bilinear x4, x2, x1, x0.5, as published) or learned (a "
            "trainable deconvolution / max-pool neck, ViTDet/Rein-style)"
        },
    )
    embed_resample: EmbedResample = field(
        default="bicubic",
        metadata={
            "help": "patch kernel / position grid resizing, to patch_size/img_size and the grid to each "
            "input: bicubic (no antialias: the published conversion, DINOv2's run-time rule) or pinv (timm's "
            "pseudo-inverse kernel, antialiased grid)"
        },
    )
    model_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "further timm.create_model arguments (depth, embed_dim, ...)"}
    )

    def __post_init__(self) -> None:
        if self.out_indices is not None:
            object.__setattr__(self, "out_indices", tuple(self.out_indices))
        validate_fields(self)
        check_source(self.weights)
        source = WEIGHT_SOURCES.get(self.weights)
        if source is not None and source.model is not None and self.name != source.model:
            raise InvalidInputError(
                f"weights={self.weights!r} is {source.description} and needs name={source.model!r}, got "
                f"{self.name!r}: use weights='hub' or a checkpoint file for other models."
            )
        indices = self.out_indices
        if indices is not None and (
            len(indices) != len(PYRAMID_SCALES) or any(a >= b for a, b in itertools.pairwise(indices))
        ):
            raise InvalidInputError(
                f"out_indices must be {len(PYRAMID_SCALES)} increasing block indices >= 0 (one per pyramid "
                f"level), got {indices!r}; or None for evenly spaced blocks."
            )
        reserved = sorted(_RESERVED_KWARGS & set(self.model_kwargs))
        if reserved:
            raise InvalidInputError(f"model_kwargs may not set {reserved}: use the config fields of the same name.")
