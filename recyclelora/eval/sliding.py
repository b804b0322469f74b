"""Whole-image and sliding-window inference with logits averaged where windows overlap (as mmseg does).

Along an axis of length ``L`` with crop ``c' = min(c, L)`` and stride ``s``, the window count is
``n = max(L - c' + s - 1, 0) // s + 1``; window ``i`` ends at ``e_i = min(i * s + c', L)`` and starts at
``e_i - c'``, so the last window is aligned to the border and every window has the same size. The output is
``sum_w scores_w / count``, where ``count`` is the number of windows covering each pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

Predict = Callable[[torch.Tensor], torch.Tensor]
Window = tuple[int, int, int, int]  # (top, bottom, left, right), bottom/right exclusive


@dataclass(frozen=True)
class SlidingWindowConfig:
    """Window size, stride and how many windows go through ``predict`` per call."""

    crop: tuple[int, int] = field(default=(512, 512), metadata={"ge": 1})  # (height, width)
    stride: tuple[int, int] = field(default=(341, 341), metadata={"ge": 1})  # (height, width)
    batch_size: int = field(default=8, metadata={"ge": 1})  # windows (times images) per predict call

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", tuple(self.crop))
        object.__setattr__(self, "stride", tuple(self.stride))
        validate_fields(self)
        if any(s > c for s, c in zip(self.stride, self.crop)):
            raise InvalidInputError(
                f"stride={self.stride} exceeds crop={self.crop}: pixels between windows would get no score; "
                "use a stride <= crop"
            )


def _axis_windows(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    crop = min(crop, length)
    count = max(length - crop + stride - 1, 0) // stride + 1
    ends = [min(i * stride + crop, length) for i in range(count)]
    return [(end - crop, end) for end in ends]


def window_grid(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[Window]:
    """Windows ``(top, bottom, left, right)`` covering an ``height x width`` image, row-major."""
    rows = _axis_windows(height, crop[0], stride[0])
    cols = _axis_windows(width, crop[1], stride[1])
    return [(top, bottom, left, right) for top, bottom in rows for left, right in cols]


def _checked(scores: torch.Tensor, batch: int, num_classes: int, size: tuple[int, int]) -> torch.Tensor:
    """Validate ``predict``'s output against the contract ``(B, C, h, w)`` at the input size."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 4:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"predict must return a (B, C, h, w) tensor of class scores, got {shape}")
    if scores.shape[1] != num_classes:
        raise InvalidInputError(
            f"predict returned {scores.shape[1]} class scores per pixel but num_classes={num_classes}: "
            "the model's head and the evaluated class list disagree"
        )
    if scores.shape[0] != batch or tuple(scores.shape[2:]) != size:
        raise ValueError(
            f"predict returned shape {tuple(scores.shape)} for a ({batch}, 3, {size[0]}, {size[1]}) input: "
            "scores must be at the input size (upsample the logits in the model)"
        )
    return scores


def whole_inference(predict: Predict, image: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Scores ``(B, C, H, W)`` of a ``(B, 3, H, W)`` batch in one ``predict`` call."""
    scores = _checked(predict(image), image.shape[0], num_classes, tuple(image.shape[2:]))
    return scores.to(device=image.device, dtype=torch.float32)


def slide_inference(
    predict: Predict,
    image: torch.Tensor,
    num_classes: int,
    config: SlidingWindowConfig | None = None,
) -> torch.Tensor:
    """Scores ``(B, C, H, W)`` averaged over overlapping windows (float32, on ``image``'s device).

    Windows of all images in the batch are stacked and sent to ``predict`` in groups of at most
    ``config.batch_size`` crops (at least one window per call).
    """
    config = config or SlidingWindowConfig()
    if image.ndim != 4:
        raise ValueError(f"image must be a (B, 3, H, W) batch, got shape {tuple(image.shape)}")
    batch, _, height, width = image.shape
    windows = window_grid(height, width, config.crop, config.stride)
    scores = image.new_zeros((batch, num_classes, height, width), dtype=torch.float32)
    count = image.new_zeros((1, 1, height, width), dtype=torch.float32)
    per_call = max(config.batch_size // batch, 1)
    for start in range(0, len(windows), per_call):
        group = windows[start : start + per_call]
        crops = torch.cat([image[:, :, top:bottom, left:right] for top, bottom, left, right in group])
        out = _checked(predict(crops), crops.shape[0], num_classes, tuple(crops.shape[2:]))
        out = out.to(device=image.device, dtype=torch.float32).unflatten(0, (len(group), batch))
        for (top, bottom, left, right), window_scores in zip(group, out):
            scores[:, :, top:bottom, left:right] += window_scores
            count[:, :, top:bottom, left:right] += 1
    return scores / count
