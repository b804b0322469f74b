"""Training and evaluation transforms of (RGB uint8 image, trainId uint8 label) pairs.

Training follows the published recipe (mmseg's pipeline): random short-edge resize to
``base_size x ratio`` capped by ``max_long_edge``, random crop with at most ``cat_max_ratio`` of the crop's
labelled pixels in one class, horizontal flip, photometric distortion, ImageNet normalisation, and padding to
the crop size (image 0 after normalisation, label 255). Every random draw comes from the
``np.random.Generator`` passed in, so a seeded generator reproduces the sample exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from recyclelora.data.classes import IGNORE_INDEX

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
SCALE_RATIOS: tuple[float, ...] = tuple(round(0.1 * step, 1) for step in range(5, 21))

ImageLike = np.ndarray | torch.Tensor
#: ``transform(image (H, W, 3) uint8, label (H, W) uint8, rng)`` -> (image (3, H', W') float32,
#: label (H', W') int64).
SegmentationTransform = Callable[
    [ImageLike, ImageLike, np.random.Generator], tuple[torch.Tensor, torch.Tensor]
]


def _check_normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean={mean} and std={std} need three RGB values each (0-255 scale), std > 0")


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1]:
        raise ValueError(f"{name}={bounds} must be a (low, high) pair with 0 <= low <= high")


@dataclass(frozen=True)
class TrainTransformConfig:
    """Training augmentation; the defaults are the published configuration's."""

    crop_size: tuple[int, int] = (512, 512)
    """Crop (height, width) in pixels; smaller resized images are padded up to it."""
    base_size: int = 512
    """Short-edge length that ``scale_ratios`` multiply."""
    scale_ratios: tuple[float, ...] = SCALE_RATIOS
    """Candidate ratios; one is drawn uniformly per sample."""
    max_long_edge: int = 2048
    """The resize never makes the long edge longer than this."""
    cat_max_ratio: float = 0.75
    """Largest share of one class among a crop's labelled pixels; 1.0 disables the check."""
    crop_attempts: int = 10
    """Extra crops drawn while the ratio is exceeded (the last one is kept), as mmseg's RandomCrop."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip."""
    photometric: bool = True
    """Apply the photometric distortion."""
    brightness_delta: float = 32.0
    """Brightness: add U(-delta, delta) (0-255 scale), with probability 0.5."""
    contrast_range: tuple[float, float] = (0.5, 1.5)
    """Contrast: multiply by U(low, high), with probability 0.5."""
    saturation_range: tuple[float, float] = (0.5, 1.5)
    """Saturation: blend with the greyscale image by a factor U(low, high), with probability 0.5."""
    hue_delta: float = 0.1
    """Hue: rotate by U(-delta, delta) turns (0.1 = mmseg's 18 of OpenCV's 180), with probability 0.5."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Normalisation mean (RGB, 0-255 scale)."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Normalisation standard deviation (RGB, 0-255 scale)."""

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
            raise ValueError(
                f"crop_size={self.crop_size} must be a (height, width) pair of positive integers"
            )
        if self.base_size <= 0 or self.max_long_edge <= 0:
            raise ValueError(
                f"base_size={self.base_size} and max_long_edge={self.max_long_edge} must be positive"
            )
        if not self.scale_ratios or min(self.scale_ratios) <= 0:
            raise ValueError(f"scale_ratios={self.scale_ratios} must be a non-empty tuple of positive ratios")
        if not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio={self.cat_max_ratio} must be in (0, 1]; use 1.0 to disable it")
        if self.crop_attempts < 0:
            raise ValueError(f"crop_attempts={self.crop_attempts} must be >= 0")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob={self.flip_prob} must be a probability in [0, 1]")
        if self.brightness_delta < 0:
            raise ValueError(f"brightness_delta={self.brightness_delta} must be >= 0")
        _check_range("contrast_range", self.contrast_range)
        _check_range("saturation_range", self.saturation_range)
        if not 0 <= self.hue_delta <= 0.5:
            raise ValueError(f"hue_delta={self.hue_delta} must be in [0, 0.5] turns of the hue circle")
        _check_normalisation(self.mean, self.std)


def _check_pair(name: str, value: tuple[int, int] | None) -> None:
    if value is not None and (len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(f"{name}={value} must be a pair of positive integers")


@dataclass(frozen=True)
class ResizeConfig:
    """The size an ``H x W`` test image is scored at, ``h x w = round(f H) x round(f W)``: at most one rule.

    ``size`` (w, h) sets it outright; ``short_edge`` s gives ``f = s / min(H, W)``; ``fit`` (L, S) gives
    ``f = min(L / max(H, W), S / min(H, W))``, the largest size inside L x S (mmseg's keep-ratio ``Resize``,
    e.g. Mapillary's protocol: halved images fitted into 2048 x 1024); none keeps ``H x W``.
    """

    size: tuple[int, int] | None = None
    """Resize the image to this (width, height)."""
    short_edge: int | None = None
    """Or resize the image so that its short edge has this length (aspect ratio kept)."""
    fit: tuple[int, int] | None = None
    """Or resize it to the largest size that fits in (long edge, short edge) (aspect ratio kept)."""

    def __post_init__(self) -> None:
        for name in ("size", "fit"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
                _check_pair(name, getattr(self, name))
        chosen = {
            k: v
            for k, v in (("size", self.size), ("short_edge", self.short_edge), ("fit", self.fit))
            if v is not None
        }
        if len(chosen) > 1:
            raise ValueError(f"{chosen} are exclusive: set one of size, short_edge and fit")
        if self.short_edge is not None and not (isinstance(self.short_edge, int) and self.short_edge > 0):
            raise ValueError(f"short_edge={self.short_edge!r} must be a positive integer")

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

    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Normalisation mean (RGB, 0-255 scale)."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Normalisation standard deviation (RGB, 0-255 scale)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_normalisation(self.mean, self.std)


def _as_tensor(array: ImageLike) -> torch.Tensor:
    """A tensor view of ``array``; read-only numpy arrays (as PIL gives) are copied first."""
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array)


def image_tensor(image: ImageLike) -> torch.Tensor:
    """(H, W, 3) uint8 array or tensor -> (3, H, W) uint8 tensor."""
    tensor = _as_tensor(image)
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[2] != 3:
        raise ValueError(
            f"expected an RGB image of shape (H, W, 3) and dtype uint8, "
            f"got {tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor.permute(2, 0, 1).contiguous()


def label_tensor(label: ImageLike, image: torch.Tensor) -> torch.Tensor:
    """(H, W) uint8 trainId array or tensor -> (1, H, W) uint8 tensor, checked against the image size."""
    tensor = _as_tensor(label)
    if tensor.dtype != torch.uint8 or tuple(tensor.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"expected a uint8 label of shape {tuple(image.shape[1:])} (the image's), "
            f"got {tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor[None]


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(image - mean) / std`` per channel on a (3, H, W) uint8 or 0-255 float image."""
    return TF.normalize(image.float(), list(mean), list(std))


class TrainTransform:
    """Training pipeline of :class:`TrainTransformConfig`: resize, crop, flip, photometric, normalise, pad."""

    def __init__(self, config: TrainTransformConfig = TrainTransformConfig()) -> None:
        self.config = config

    def __call__(
        self, image: ImageLike, label: ImageLike, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        img = image_tensor(image)
        lbl = label_tensor(label, img)
        size = self.resized_size(img.shape[1], img.shape[2], float(rng.choice(cfg.scale_ratios)))
        img = TF.resize(img, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        lbl = TF.resize(lbl, list(size), interpolation=InterpolationMode.NEAREST)
        top, left = self.crop_origin(lbl[0], rng)
        crop_h, crop_w = cfg.crop_size
        img = img[:, top : top + crop_h, left : left + crop_w]
        lbl = lbl[:, top : top + crop_h, left : left + crop_w]
        if rng.random() < cfg.flip_prob:
            img, lbl = img.flip(-1), lbl.flip(-1)
        if cfg.photometric:
            img = image_tensor(self.photometric(np.ascontiguousarray(img.permute(1, 2, 0).numpy()), rng))
        out = normalize(img, cfg.mean, cfg.std)
        pad = (0, crop_w - out.shape[2], 0, crop_h - out.shape[1])
        out = F.pad(out, pad, value=0.0)
        lbl = F.pad(lbl, pad, value=IGNORE_INDEX)
        return out, lbl[0].long()

    def resized_size(self, height: int, width: int, ratio: float) -> tuple[int, int]:
        """(height, width) after scaling by ``min(base*ratio / short edge, max_long_edge / long edge)``."""
        cfg = self.config
        factor = min(cfg.base_size * ratio / min(height, width), cfg.max_long_edge / max(height, width))
        return int(height * factor + 0.5), int(width * factor + 0.5)

    def crop_origin(self, label: torch.Tensor, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of a random crop of the (H, W) ``label``, redrawn (up to ``crop_attempts`` times)
        while one class exceeds ``cat_max_ratio`` of the crop's non-ignored pixels or is the only one.
        """
        cfg = self.config
        crop_h, crop_w = cfg.crop_size
        margin_h, margin_w = max(label.shape[0] - crop_h, 0), max(label.shape[1] - crop_w, 0)

        def draw() -> tuple[int, int]:
            return int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))

        top, left = draw()
        if cfg.cat_max_ratio >= 1:
            return top, left
        for _ in range(cfg.crop_attempts):
            crop = label[top : top + crop_h, left : left + crop_w]
            counts = torch.bincount(crop.flatten().long(), minlength=256)
            counts[IGNORE_INDEX] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() < cfg.cat_max_ratio * counts.sum():
                break
            top, left = draw()
        return top, left

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """mmseg's PhotoMetricDistortion on an (H, W, 3) uint8 image, back to uint8 after each step.

        Each step applies with probability 0.5: brightness ``x + U(-d, d)``; contrast ``x * U(a, b)`` (before
        or after the colour steps, chosen at random); saturation as a greyscale blend by a factor U(a, b)
        (PIL's ImageEnhance.Color; mmseg scales HSV saturation instead); hue rotation by U(-h, h) turns
        (PIL's 8-bit HSV).
        """
        cfg = self.config
        if rng.random() < 0.5:
            image = _affine(image, 1.0, rng.uniform(-cfg.brightness_delta, cfg.brightness_delta))
        contrast_first = rng.random() < 0.5
        contrast = rng.uniform(*cfg.contrast_range) if rng.random() < 0.5 else None
        if contrast_first and contrast is not None:
            image = _affine(image, contrast, 0.0)
        if rng.random() < 0.5:
            factor = float(rng.uniform(*cfg.saturation_range))
            image = np.asarray(TF.adjust_saturation(Image.fromarray(image), factor))
        if rng.random() < 0.5:
            shift = float(rng.uniform(-cfg.hue_delta, cfg.hue_delta))
            image = np.asarray(TF.adjust_hue(Image.fromarray(image), shift))
        if not contrast_first and contrast is not None:
            image = _affine(image, contrast, 0.0)
        return image


def _affine(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``clip(image * alpha + beta, 0, 255)`` truncated to uint8, as mmcv's colour conversions do."""
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class EvalTransform:
    """Resize the image as :class:`EvalTransformConfig` says and normalise it; the label stays as it is."""

    def __init__(self, config: EvalTransformConfig = EvalTransformConfig()) -> None:
        self.config = config

    def __call__(
        self, image: ImageLike, label: ImageLike, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        img = image_tensor(image)
        lbl = label_tensor(label, img)
        height, width = img.shape[1:]
        size = cfg.output_size(height, width)
        if size != (height, width):
            img = TF.resize(img, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        return normalize(img, cfg.mean, cfg.std), lbl[0].long()
