"""The transforms' configs: training augmentation, evaluation resize rules, normalisation. Imports no torch;
:mod:`recyclelora.data.transforms` applies them (its docstring has the training pipeline step by step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
SCALE_RATIOS: tuple[float, ...] = tuple(round(0.1 * step, 1) for step in range(5, 21))
#: Where the training pad to the crop size happens (see :mod:`recyclelora.data.transforms`).
PadAt = Literal["before_flip", "after_normalize"]
_MEAN_HELP = "normalisation mean, RGB, 0-255 scale"
_STD_HELP = "normalisation standard deviation, RGB, 0-255 scale"


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    if bounds[0] > bounds[1]:
        raise InvalidInputError(f"{name}={bounds} must be a (low, high) pair with 0 <= low <= high")


@dataclass(frozen=True)
class TrainTransformConfig:
    """Training augmentation; the defaults are the published G->CBM configuration's."""

    crop_size: tuple[int, int] = field(
        default=(512, 512),
        metadata={
            "help": "random crop (h, w) in pixels, a multiple of the patch size; smaller images are padded "
            "to it",
            "ge": 1,
        },
    )
    base_size: int = field(
        default=512,
        metadata={
            "help": "the short edge is resized to int(base_size x a ratio drawn from scale_ratios)",
            "ge": 1,
        },
    )
    scale_ratios: tuple[float, ...] = field(
        default=SCALE_RATIOS, metadata={"help": "resize ratios, one drawn uniformly per sample"}
    )
    max_long_edge: int = field(
        default=2048, metadata={"help": "the resize never makes the long edge longer than this", "ge": 1}
    )
    cat_max_ratio: float = field(
        default=0.75,
        metadata={
            "help": "largest share of one class among a crop's labelled pixels (redrawn up to crop_attempts "
            "times); 1.0 disables the check",
            "gt": 0,
            "le": 1,
        },
    )
    crop_attempts: int = field(
        default=10,
        metadata={
            "help": "extra crops drawn while cat_max_ratio is exceeded (the last one is kept), as mmseg's "
            "RandomCrop",
            "ge": 0,
        },
    )
    pad_at: PadAt = field(
        default="before_flip",
        metadata={
            "help": "pad to crop_size: before_flip (uint8 0, G->CBM, C->BM) or after_normalize (0 after "
            "normalisation, GS/GSU->CBM); the label is padded with 255 either way"
        },
    )
    flip_prob: float = field(default=0.5, metadata={"help": "horizontal flip probability", "ge": 0, "le": 1})
    photometric: bool = field(
        default=True,
        metadata={"help": "brightness, contrast, saturation and hue distortion (each with probability 0.5)"},
    )
    brightness_delta: float = field(
        default=32.0, metadata={"help": "brightness: add U(-d, d) (0-255 scale)", "ge": 0}
    )
    contrast_range: tuple[float, float] = field(
        default=(0.5, 1.5), metadata={"help": "contrast: multiply by U(a, b)", "ge": 0}
    )
    saturation_range: tuple[float, float] = field(
        default=(0.5, 1.5),
        metadata={"help": "saturation: multiply the HSV saturation (0-255) by U(a, b)", "ge": 0},
    )
    hue_delta: int = field(
        default=18,
        metadata={
            "help": "hue: add an integer of [-d, d) to OpenCV's hue (0-179, 2 degrees each)",
            "ge": 0,
            "le": 90,
        },
    )
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN, metadata={"help": _MEAN_HELP})
    std: tuple[float, float, float] = field(default=IMAGENET_STD, metadata={"help": _STD_HELP, "gt": 0})

    def __post_init__(self) -> None:
        validate_fields(self)
        if not self.scale_ratios or min(int(self.base_size * r) for r in self.scale_ratios) < 1:
            raise InvalidInputError(f"scale_ratios={self.scale_ratios} must be non-empty, base_size * ratio >= 1")
        _check_range("contrast_range", self.contrast_range)
        _check_range("saturation_range", self.saturation_range)


@dataclass(frozen=True)
class ResizeConfig:
    """The size an ``H x W`` test image is scored at, ``h x w = round(f H) x round(f W)``: at most one rule.

    ``size`` (w, h) sets it outright; ``short_edge`` s gives ``f = s / min(H, W)``; ``fit`` (L, S) gives
    ``f = min(L / max(H, W), S / min(H, W))``, the largest size inside L x S (mmseg's keep-ratio ``Resize``,
    e.g. Mapillary's protocol: halved images fitted into 2048 x 1024); none keeps ``H x W``.
    """

    size: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "resize the image to [w, h] (the label keeps its size); all of size, short_edge, fit null "
            "= as is",
            "ge": 1,
        },
    )
    short_edge: int | None = field(
        default=None, metadata={"help": "or resize the short edge to this length, aspect kept", "ge": 1}
    )
    fit: tuple[int, int] | None = field(
        default=None,
        metadata={
            "help": "or to the largest size inside [long, short], aspect kept (mmseg's keep-ratio Resize)",
            "ge": 1,
        },
    )

    def __post_init__(self) -> None:
        for name in ("size", "fit"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        validate_fields(self)
        chosen = {
            k: v
            for k, v in (("size", self.size), ("short_edge", self.short_edge), ("fit", self.fit))
            if v is not None
        }
        if len(chosen) > 1:
            raise InvalidInputError(f"{chosen} are exclusive: set one of size, short_edge and fit")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` at which an ``height x width`` image is scored."""
        if self.size is not None:
            return self.size[1], self.size[0]
        if self.short_edge is not None:
            factor = self.short_edge / min(height, width)
        elif self.fit is not None:
            factor = min(max(self.fit) / max(height, width), min(self.fit) / min(height, width))
        else:
            return height, width
        return int(height * factor + 0.5), int(width * factor + 0.5)


@dataclass(frozen=True)
class EvalTransformConfig(ResizeConfig):
    """Evaluation preprocessing: optional resize of the image (never of the label), then normalisation."""

    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN, metadata={"help": _MEAN_HELP})
    std: tuple[float, float, float] = field(default=IMAGENET_STD, metadata={"help": _STD_HELP, "gt": 0})
