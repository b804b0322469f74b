"""The decode head's config (:class:`HeadConfig`). Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from recyclelora.data.classes import NUM_CLASSES
from recyclelora.errors import InvalidInputError
from recyclelora.models.heads.registry import HEADS
from recyclelora.validation import validate_fields


@dataclass(frozen=True)
class HeadConfig:
    """Decode head settings; the Mask2Former fields default to the paper's recipe (reference/method.md).

    ``kind`` names an entry of :data:`~recyclelora.models.heads.registry.HEADS`, which also gives ``channels``
    when it is left unset.
    """

    kind: str = field(
        default="mask2former",
        metadata={
            "help": " or ".join(f"{head.name} ({head.description})" for head in HEADS.values()),
            "choices": tuple(HEADS),
        },
    )
    num_classes: int | None = field(
        default=NUM_CLASSES,
        metadata={
            "help": "semantic classes, the ignore label not counted; null = the training data's class set "
            "(Cityscapes: 19)",
            "ge": 1,
        },
    )
    channels: int | None = field(
        default=None,
        metadata={
            "help": "feature width: FPN width (light) or pixel-decoder width (mask2former); null = the "
            f"head's default ({', '.join(f'{head.name}: {head.channels}' for head in HEADS.values())})",
            "ge": 1,
        },
    )
    init: str = field(
        default="mmdet",
        metadata={
            "help": "Mask2Former: weight initialisation, mmdet (the published head's rules) or transformers "
            "(transformers' own _init_weights)",
            "choices": ("mmdet", "transformers"),
        },
    )
    num_queries: int = field(default=100, metadata={"help": "Mask2Former: object queries", "ge": 1})
    hidden_dim: int = field(
        default=256, metadata={"help": "Mask2Former: width of the transformer decoder", "ge": 1}
    )
    pixel_decoder_layers: int = field(
        default=6,
        metadata={
            "help": "Mask2Former: deformable-attention layers of the pixel decoder (over 3 levels)",
            "ge": 1,
        },
    )
    decoder_layers: int = field(
        default=9,
        metadata={
            "help": "Mask2Former: masked-attention decoder layers (each adds an auxiliary prediction)",
            "ge": 1,
        },
    )
    num_heads: int = field(
        default=8, metadata={"help": "Mask2Former: attention heads of the pixel decoder and decoder", "ge": 1}
    )
    dim_feedforward: int = field(
        default=2048, metadata={"help": "Mask2Former: FFN width of the transformer decoder", "ge": 1}
    )
    pixel_decoder_feedforward_dim: int = field(
        default=1024, metadata={"help": "Mask2Former: FFN width of the pixel decoder", "ge": 1}
    )
    class_weight: float = field(
        default=2.0, metadata={"help": "Mask2Former: weight of the query classification loss", "ge": 0}
    )
    no_object_weight: float = field(
        default=0.1,
        metadata={"help": "Mask2Former: cross-entropy weight of the no-object class", "gt": 0, "le": 1},
    )
    mask_weight: float = field(
        default=5.0, metadata={"help": "Mask2Former: weight of the point-sampled mask BCE loss", "ge": 0}
    )
    dice_weight: float = field(
        default=5.0, metadata={"help": "Mask2Former: weight of the point-sampled dice loss", "ge": 0}
    )
    train_num_points: int = field(
        default=12544, metadata={"help": "Mask2Former: points sampled per mask for the mask losses", "ge": 1}
    )
    oversample_ratio: float = field(
        default=3.0, metadata={"help": "Mask2Former: candidate points per sampled point", "ge": 1}
    )
    importance_sample_ratio: float = field(
        default=0.75,
        metadata={
            "help": "Mask2Former: share of points taken where the mask is most uncertain",
            "ge": 0,
            "le": 1,
        },
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.channels is None:
            object.__setattr__(self, "channels", HEADS[self.kind].channels)
        if self.class_weight == self.mask_weight == self.dice_weight == 0:
            raise InvalidInputError(
                "HeadConfig.class_weight, mask_weight and dice_weight are all 0: make one positive."
            )
        check = HEADS[self.kind].check
        if check is not None:
            check(self)
