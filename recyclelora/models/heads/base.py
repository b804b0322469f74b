"""Decode-head contract and the weight-decay split of head parameters (the config: :mod:`.config`)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recyclelora.data.classes import IGNORE_INDEX
from recyclelora.errors import InvalidInputError


class SegHead(nn.Module, abc.ABC):
    """A decode head: multi-scale features -> raw output -> losses or per-class scores.

    ``forward`` returns whatever the head's loss and inference need; ``semantic_logits`` turns it into
    ``(B, num_classes, H, W)`` scores at a requested size, so the caller never looks inside.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.in_channels = tuple(int(c) for c in in_channels)
        self.num_classes = num_classes

    @abc.abstractmethod
    def forward(self, features: list[Tensor]) -> Any:
        """Decode the backbone's feature maps (finest first)."""

    @abc.abstractmethod
    def loss(self, output: Any, labels: Tensor) -> dict[str, Tensor]:
        """Losses against ``(B, H, W)`` labels (IGNORE_INDEX = ignore); ``"loss"`` is their weighted sum."""

    @abc.abstractmethod
    def semantic_logits(self, output: Any, size: tuple[int, int]) -> Tensor:
        """Per-class scores ``(B, num_classes, *size)``; the prediction is their argmax over classes."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names, beyond those of norm layers, that weight decay skips (timm's hook)."""
        return set()

    def check_features(self, features: Sequence[Tensor]) -> None:
        """Raise a ValueError if ``features`` does not match ``in_channels`` level by level."""
        channels = tuple(f.shape[1] for f in features)
        if channels != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for feature channels {self.in_channels}, got {channels}: "
                "build the head with the backbone's out_channels."
            )

    def check_labels(self, labels: Tensor) -> None:
        """Raise a ValueError unless ``labels`` is an integer ``(B, H, W)`` map of class ids or ignore."""
        if labels.ndim != 3 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(
                "labels must be an integer tensor of shape (B, H, W), "
                f"got {labels.dtype} {tuple(labels.shape)}."
            )
        invalid = (labels < 0) | ((labels >= self.num_classes) & (labels != IGNORE_INDEX))
        if bool(invalid.any()):
            bad = sorted(labels[invalid].unique().tolist())[:10]
            raise InvalidInputError(
                f"labels hold ids {bad} outside [0, {self.num_classes}) and != {IGNORE_INDEX}: "
                "map them to trainIds (or the ignore index) first."
            )


@dataclass
class ParamGroups:
    """Trainable parameters split for AdamW, each with its name relative to the module it came from."""

    decay: list[tuple[str, nn.Parameter]]
    no_decay: list[tuple[str, nn.Parameter]]


#: Layers whose parameters never decay (mmengine's ``norm_decay_mult=0``: batch, group and layer norms).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def weight_decay_groups(root: nn.Module) -> ParamGroups:
    """Split ``root``'s trainable parameters into weight-decay and no-decay groups as the published optimiser
    wrapper does (mmengine's ``paramwise_cfg``: ``norm_decay_mult=0`` and ``decay_mult=0`` for the
    ``norm``, ``query_embed`` and ``level_embed`` keys).

    No decay: every parameter of a norm layer and the names listed by ``root.no_weight_decay()`` (the head's
    equivalents of those keys; timm's hook on a ViT). Everything else decays, biases included, since the
    published config leaves ``bias_decay_mult`` unset. Used for heads, the learned neck and fully tuned
    backbones.
    """
    skip = root.no_weight_decay() if hasattr(root, "no_weight_decay") else set()
    groups = ParamGroups(decay=[], no_decay=[])
    for module_name, module in root.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = f"{module_name}.{param_name}" if module_name else param_name
            exempt = isinstance(module, NORM_LAYERS) or "norm" in name or name in skip
            (groups.no_decay if exempt else groups.decay).append((name, param))
    return groups
