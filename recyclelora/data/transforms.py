"""Training and evaluation transforms of (RGB uint8 image, trainId uint8 label) pairs.

Training reproduces the published mmseg 1.x / mmcv 2.x pipeline step by step:

1. ``RandomChoiceResize(ResizeShortestEdge)``: short edge ``int(base_size * ratio)`` for a ratio drawn
   uniformly, long edge capped at ``max_long_edge``, then mmcv's keep-ratio rescale; OpenCV bilinear for the
   image (no antialiasing), nearest for the label.
2. ``RandomCrop`` with ``cat_max_ratio``.
3. ``Pad`` to the crop size when ``pad_at="before_flip"`` (the G->CBM and C->BM configs): image 0 (uint8),
   label 255, bottom/right; flip and photometric distortion then act on the padded image.
4. ``RandomFlip`` (horizontal).
5. ``PhotoMetricDistortion``, OpenCV HSV on uint8 for saturation and hue.
6. ``SegDataPreProcessor``: ``(x - mean) / std``; with ``pad_at="after_normalize"`` (the GTAV base pipeline of
   the GS/GSU->CBM configs) the pad happens only here: image 0 after normalisation, label 255, bottom/right.

Every random draw comes from the ``np.random.Generator`` passed in, so a seeded generator reproduces the
sample exactly (the draws follow mmseg's distributions, not its global numpy stream).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from recyclelora.data.classes import IGNORE_INDEX
from recyclelora.data.transform_config import (
    EvalTransformConfig,
    TrainTransformConfig,
)
from recyclelora.errors import InvalidInputError

#: The 256 values of a uint8 pixel: the per-pixel maps below are computed on these once, then looked up.
LEVELS = np.arange(256, dtype=np.uint8)

ImageLike = np.ndarray | torch.Tensor
#: ``transform(image (H, W, 3) uint8, label (H, W) uint8, rng)`` -> (image (3, H', W') float32,
#: label (H', W') int64).
SegmentationTransform = Callable[
    [ImageLike, ImageLike, np.random.Generator], tuple[torch.Tensor, torch.Tensor]
]


def _as_tensor(array: ImageLike) -> torch.Tensor:
    """A tensor view of ``array``; read-only numpy arrays (as PIL gives) are copied first."""
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = array.copy()
    return torch.as_tensor(array)


def _check_image(shape: tuple[int, ...], is_uint8: bool, dtype: object) -> None:
    if not is_uint8 or len(shape) != 3 or shape[2] != 3:
        raise InvalidInputError(f"expected an RGB image of shape (H, W, 3) and dtype uint8, got {shape} {dtype}")


def _check_label(shape: tuple[int, ...], is_uint8: bool, dtype: object, size: tuple[int, ...]) -> None:
    if not is_uint8 or shape != size:
        raise InvalidInputError(f"expected a uint8 label of shape {size} (the image's), got {shape} {dtype}")


def image_tensor(image: ImageLike) -> torch.Tensor:
    """(H, W, 3) uint8 array or tensor -> (3, H, W) uint8 tensor."""
    tensor = _as_tensor(image)
    _check_image(tuple(tensor.shape), tensor.dtype == torch.uint8, tensor.dtype)
    return tensor.permute(2, 0, 1).contiguous()


def label_tensor(label: ImageLike, image: torch.Tensor) -> torch.Tensor:
    """(H, W) uint8 trainId array or tensor -> (1, H, W) uint8 tensor, checked against the image size."""
    tensor = _as_tensor(label)
    _check_label(tuple(tensor.shape), tensor.dtype == torch.uint8, tensor.dtype, tuple(image.shape[1:]))
    return tensor[None]


def _as_array(array: ImageLike) -> np.ndarray:
    """A numpy view of ``array`` (a CPU tensor's memory, or a read-only array as it is): nothing copied."""
    return array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def image_label_arrays(image: ImageLike, label: ImageLike) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 label as numpy views, checked as :func:`image_tensor` and
    :func:`label_tensor` check them, without the copies a channel-first tensor costs."""
    img, lbl = _as_array(image), _as_array(label)
    _check_image(img.shape, img.dtype == np.uint8, img.dtype)
    _check_label(lbl.shape, lbl.dtype == np.uint8, lbl.dtype, img.shape[:2])
    return img, lbl


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(image - mean) / std`` per channel on a (3, H, W) uint8 or 0-255 float image."""
    return TF.normalize(image.float(), list(mean), list(std))


class TrainTransform:
    """Training pipeline of :class:`TrainTransformConfig` (mmseg's, see the module docstring)."""

    def __init__(self, config: TrainTransformConfig = TrainTransformConfig()) -> None:
        self.config = config
        self.short_edges = tuple(int(config.base_size * ratio) for ratio in config.scale_ratios)
        """Candidate short edges ``int(base_size * ratio)``, RandomChoiceResize's ``scales``."""
        levels = torch.from_numpy(LEVELS).expand(3, 1, len(LEVELS))
        self.normalized_levels = normalize(levels, config.mean, config.std)[:, 0].numpy()
        """``normalized_levels[c, v]``: :func:`normalize`'s value for ``v`` in channel ``c`` (3 x 256)."""

    def __call__(
        self, image: ImageLike, label: ImageLike, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The module docstring's steps: (3, crop_h, crop_w) float32 image, (crop_h, crop_w) int64 label."""
        cfg = self.config
        img, lbl = image_label_arrays(image, label)
        edge = self.short_edges[int(rng.integers(len(self.short_edges)))]
        img, lbl = resize_pair(img, lbl, self.resized_size(*lbl.shape, edge))
        top, left = self.crop_origin(lbl, rng)
        crop_h, crop_w = cfg.crop_size
        window = (slice(top, top + crop_h), slice(left, left + crop_w))
        img, lbl = img[window], lbl[window]
        pad = (0, crop_w - img.shape[1], 0, crop_h - img.shape[0])  # left, right, top, bottom
        if cfg.pad_at == "before_flip" and (pad[1] or pad[3]):
            img = np.pad(img, ((0, pad[3]), (0, pad[1]), (0, 0)), constant_values=0)
            lbl = np.pad(lbl, ((0, pad[3]), (0, pad[1])), constant_values=IGNORE_INDEX)
        if rng.random() < cfg.flip_prob:
            img, lbl = img[:, ::-1], lbl[:, ::-1]
        img = np.ascontiguousarray(img)
        if cfg.photometric:
            img = self.photometric(img, rng)
        out = self.normalize(img)
        lbl_t = torch.from_numpy(np.ascontiguousarray(lbl)).long()
        if cfg.pad_at == "after_normalize":
            out, lbl_t = F.pad(out, pad, value=0.0), F.pad(lbl_t, pad, value=IGNORE_INDEX)
        return out, lbl_t

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """:func:`normalize` of an (H, W, 3) uint8 image as a (3, H, W) float32 tensor: the same values,
        looked up per channel in :attr:`normalized_levels` instead of computed per pixel."""
        out = np.empty((3, *image.shape[:2]), np.float32)
        for channel, plane in enumerate(cv2.split(image)):
            out[channel] = cv2.LUT(plane, self.normalized_levels[channel])
        return torch.from_numpy(out)

    def resized_size(self, height: int, width: int, short_edge: int) -> tuple[int, int]:
        """(height, width) of mmseg's ResizeShortestEdge followed by mmcv's keep-ratio ``imrescale``.

        First ``(h, w) = (s / m) (H, W)`` with the short edge exactly ``s`` (``m = min(H, W)``), scaled by
        ``L / max(h, w)`` when that exceeds ``L = max_long_edge``, each rounded as ``int(x + 0.5)``; then the
        image is rescaled into that box: ``f = min(max(h, w) / max(H, W), min(h, w) / m)`` and the size is
        ``(int(H f + 0.5), int(W f + 0.5))`` (one pixel short of the box in some capped cases).
        """
        factor = short_edge / min(height, width)
        box_h, box_w = (short_edge, factor * width) if height < width else (factor * height, short_edge)
        if max(box_h, box_w) > self.config.max_long_edge:
            cap = self.config.max_long_edge / max(box_h, box_w)
            box_h, box_w = box_h * cap, box_w * cap
        box_h, box_w = int(box_h + 0.5), int(box_w + 0.5)
        factor = min(max(box_h, box_w) / max(height, width), min(box_h, box_w) / min(height, width))
        return int(height * factor + 0.5), int(width * factor + 0.5)

    def crop_origin(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of a random crop of the (H, W) ``label`` (mmseg's RandomCrop).

        Offsets are uniform in ``[0, max(H - crop_h, 0)] x [0, max(W - crop_w, 0)]``; while fewer than two
        classes are present or ``max(count) / sum(count) >= cat_max_ratio`` (counts of the crop's classes,
        255 excluded), the crop is redrawn, at most ``crop_attempts`` times; the last draw is kept unchecked.
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
            counts = np.bincount(label[top : top + crop_h, left : left + crop_w].ravel(), minlength=256)
            counts[IGNORE_INDEX] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cfg.cat_max_ratio:
                break
            top, left = draw()
        return top, left

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """mmseg 1.x's PhotoMetricDistortion on an (H, W, 3) uint8 RGB image, in mmseg's draw order.

        Brightness ``convert(x, 1, U(-d, d))``; a coin picks whether contrast ``convert(x, U(a, b), 0)`` comes
        second or last; saturation (:func:`scale_saturation`) and hue (:func:`shift_hue` by an integer of
        ``[-hue_delta, hue_delta)``) in between. Each step applies when its coin ``integers(2)`` is 1.
        """
        cfg = self.config

        def contrast(img: np.ndarray) -> np.ndarray:
            return convert(img, rng.uniform(*cfg.contrast_range)) if rng.integers(2) else img

        if rng.integers(2):
            image = convert(image, 1.0, rng.uniform(-cfg.brightness_delta, cfg.brightness_delta))
        contrast_second = bool(rng.integers(2))  # mmseg's ``mode == 1``
        if contrast_second:
            image = contrast(image)
        if rng.integers(2):
            image = scale_saturation(image, rng.uniform(*cfg.saturation_range))
        if rng.integers(2):
            image = shift_hue(image, int(rng.integers(-cfg.hue_delta, cfg.hue_delta)) if cfg.hue_delta else 0)
        if not contrast_second:
            image = contrast(image)
        return image


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an (H, W, 3) image with OpenCV bilinear (no antialiasing) and an (H, W) label with nearest to
    ``size`` (h, w), as mmcv's ``imresize`` (cv2 backend) does."""
    dsize = (size[1], size[0])
    return (
        cv2.resize(image, dsize, interpolation=cv2.INTER_LINEAR),
        cv2.resize(label, dsize, interpolation=cv2.INTER_NEAREST),
    )


def convert(image: np.ndarray, alpha: float, beta: float = 0.0) -> np.ndarray:
    """``clip(float32(image) * alpha + beta, 0, 255)`` truncated to uint8 (PhotoMetricDistortion.convert) of a
    uint8 image: the formula is computed for the 256 :data:`LEVELS`, then looked up per pixel (same values)."""
    table = np.clip(LEVELS.astype(np.float32) * float(alpha) + float(beta), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def scale_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """RGB uint8 -> OpenCV HSV, ``S <- convert(S, factor)``, -> RGB (mmseg's saturation step; OpenCV's RGB
    and BGR conversions give the same HSV, so this equals mmseg's BGR result with channels reversed)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = convert(hsv[..., 1], factor)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def shift_hue(image: np.ndarray, delta: int) -> np.ndarray:
    """RGB uint8 -> OpenCV HSV, ``H <- (H + delta) mod 180`` (H in 0..179), -> RGB (mmseg's hue step)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


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
            # bilinear without antialiasing, as mmseg's test Resize (OpenCV INTER_LINEAR)
            img = TF.resize(img, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)
        return normalize(img, cfg.mean, cfg.std), lbl[0].long()
