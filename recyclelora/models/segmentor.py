"""Backbone + decode head: per-class scores at the input size for inference, losses for training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from recyclelora.data.classes import IGNORE_INDEX
from recyclelora.models.heads.base import SegHead

if TYPE_CHECKING:
    from recyclelora.adapters import Factors
    from recyclelora.models.checkpoint import CheckpointInfo


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
        #: What the checkpoint this model was loaded from says about itself; None for a model built in memory.
        self.checkpoint_info: CheckpointInfo | None = None
        #: The adapters' initial factors from that checkpoint, by layer; None if built in memory, merged or full.
        self.init_factors: dict[str, Factors] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, backbone_weights: str | None = None) -> Segmentor:
        """Rebuild a segmentor from a checkpoint written by :func:`~recyclelora.models.save_segmentor`.

        The model carries :attr:`checkpoint_info` and :attr:`init_factors`. ``backbone_weights`` overrides where
        the pretrained backbone comes from (e.g. a local file on another machine); its hash must equal the one
        recorded at training time. Merged checkpoints need no weights.
        """
        # imported here: checkpoint.py imports this module (through build.py), a top-level import would cycle
        from recyclelora.models.checkpoint import _load_checkpoint

        return _load_checkpoint(path, backbone_weights=backbone_weights)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def trainable_parameters(self) -> dict[str, int]:
        """Trainable parameter counts by part, as papers of the field report them: ``adapters`` (the
        ``lora_*`` tensors), ``backbone`` (other backbone tensors: full fine-tuning), ``neck`` (a learned
        pyramid), ``head``, and their ``total``."""
        counts = dict.fromkeys(("adapters", "backbone", "neck", "head"), 0)
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("head."):
                part = "head"
            elif name.startswith("backbone.neck."):
                part = "neck"
            else:
                part = "adapters" if ".lora_" in name else "backbone"
            counts[part] += param.numel()
        return counts | {"total": sum(counts.values())}

    @property
    def size_divisor(self) -> int:
        """Input sizes the backbone takes are multiples of this (its patch size; 1 if it declares none)."""
        return int(getattr(self.backbone, "patch_size", 1))

    def _pad(self, images: Tensor, value: float) -> Tensor:
        """Pad bottom and right up to a multiple of :attr:`size_divisor` (the image keeps its origin)."""
        d = self.size_divisor
        pad_h, pad_w = -images.shape[-2] % d, -images.shape[-1] % d
        return F.pad(images, (0, pad_w, 0, pad_h), value=value)

    def forward(self, images: Tensor) -> Tensor:
        """Per-class scores ``(B, num_classes, H, W)`` for ``(B, 3, H, W)`` normalised images of any size.

        Inputs are zero-padded at the bottom and right to a multiple of the patch size and the scores cropped
        back, so the padded border never shifts or rescales the prediction.
        """
        height, width = images.shape[-2], images.shape[-1]
        padded = self._pad(images, 0.0)
        output = self.head(self.backbone(padded))
        scores = self.head.semantic_logits(output, (padded.shape[-2], padded.shape[-1]))
        return scores[..., :height, :width]

    def forward_train(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The head's losses (``"loss"`` = total) for images and their ``(B, H, W)`` labels (255 = ignore)."""
        expected = (images.shape[0], images.shape[-2], images.shape[-1])
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"labels must have shape (B, H, W) = {expected} to match images {tuple(images.shape)}, "
                f"got {tuple(labels.shape)}."
            )
        padded = self._pad(images, 0.0)
        labels = self._pad(labels, IGNORE_INDEX)
        return self.head.loss(self.head(self.backbone(padded)), labels)
