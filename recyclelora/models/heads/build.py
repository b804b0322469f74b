"""``build_head``: the head of :data:`~recyclelora.models.heads.registry.HEADS` a config names, built over the
backbone's features. Each factory imports its head's module when called (Mask2Former's needs transformers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from recyclelora.errors import InvalidInputError, require_extra
from recyclelora.models.heads.base import SegHead
from recyclelora.models.heads.config import HeadConfig
from recyclelora.models.heads.registry import HEADS

HeadFactory = Callable[[HeadConfig, Sequence[int]], SegHead]


def _light(config: HeadConfig, in_channels: Sequence[int]) -> SegHead:
    from recyclelora.models.heads.light import LightHead

    return LightHead(in_channels, num_classes=config.num_classes, channels=config.channels)


def _mask2former(config: HeadConfig, in_channels: Sequence[int]) -> SegHead:
    from recyclelora.models.heads.mask2former import Mask2FormerHead

    return Mask2FormerHead(in_channels, config)


#: ``(config, in_channels of the features, finest first) -> head``, one per entry of ``HEADS``.
FACTORIES: dict[str, HeadFactory] = {"light": _light, "mask2former": _mask2former}


def build_head(config: HeadConfig, in_channels: Sequence[int]) -> SegHead:
    """Build the head of :data:`HEADS` that ``config.kind`` names over features of ``in_channels`` channels
    (finest first); a missing optional dependency raises a one-line error naming the extra to install."""
    if config.num_classes is None:
        raise InvalidInputError(
            "model.head.num_classes is null (the training data's class count): give it a number, or build the "
            "model by training, which takes it from the data"
        )
    head = HEADS[config.kind]
    if head.extra is not None:
        require_extra(*head.extra, f"The {head.label} head (model.head.kind: {head.name})")
    return FACTORIES[config.kind](config, in_channels)
