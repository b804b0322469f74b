"""Backbone + decode head: per-class scores at the input size for inference, losses for training."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from recyclelora.models.heads.base import SegHead


class Segmentor(nn.Module):
    """``scores = head.semantic_logits(head(backbone(x)), size(x))``.

    The backbone is any module mapping ``(B, 3, H, W)`` images to a list of feature maps (finest first)
    with an ``out_channels`` attribute. ``forward`` is the inference path of evaluation and ONNX export: it
    has no data-dependent control flow, so ``torch.export`` and tracing capture it whole.
    """

    def __init__(self, backbone: nn.Module, head: SegHead) -> None:
        super().__init__()
        if not isinstance(head, SegHead):
            raise TypeError(
                f"head must be a SegHead (see recyclelora.models.heads), got {type(head).__name__}."
            )
        out_channels = getattr(backbone, "out_channels", None)
        if not isinstance(out_channels, Sequence) or not all(isinstance(c, int) for c in out_channels):
            raise ValueError(
                f"backbone {type(backbone).__name__} must declare out_channels, a sequence of ints (one per "
                f"feature map it returns), got {out_channels!r}."
            )
        if tuple(out_channels) != head.in_channels:
            raise ValueError(
                f"backbone out_channels {tuple(out_channels)} != head in_channels {head.in_channels}: "
                "build the head with build_head(config, backbone.out_channels)."
            )
        self.backbone = backbone
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, images: Tensor) -> Tensor:
        """Per-class scores ``(B, num_classes, H, W)`` for ``(B, 3, H, W)`` normalised images."""
        output = self.head(self.backbone(images))
        return self.head.semantic_logits(output, (images.shape[-2], images.shape[-1]))

    def forward_train(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The head's losses (``"loss"`` = total) for images and their ``(B, H, W)`` labels (255 = ignore)."""
        expected = (images.shape[0], images.shape[-2], images.shape[-1])
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"labels must have shape (B, H, W) = {expected} to match images {tuple(images.shape)}, "
                f"got {tuple(labels.shape)}."
            )
        return self.head.loss(self.head(self.backbone(images)), labels)
