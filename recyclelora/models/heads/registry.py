"""The decode heads, each defined once: name, table label, what it is, the width of its feature maps when
``HeadConfig.channels`` is unset, the extra it needs, the config rules it adds and how it is built.

``light`` is an FPN head for CPU runs; ``mask2former`` is the paper's head, built from transformers' modules
(the ``mask2former`` extra). This module imports no torch: the factories import their head's module when
called, so ``import recyclelora.models.heads`` never imports transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recyclelora.errors import InvalidInputError

if TYPE_CHECKING:
    from recyclelora.models.heads.base import SegHead
    from recyclelora.models.heads.config import HeadConfig

HeadFactory = Callable[["HeadConfig", Sequence[int]], "SegHead"]


@dataclass(frozen=True)
class Head:
    """One decode head (see the module docstring)."""

    name: str
    label: str
    description: str
    channels: int
    """Width of the head's feature maps when ``HeadConfig.channels`` is left unset."""
    build: HeadFactory
    """``(config, in_channels of the features, finest first) -> head``."""
    extra: tuple[str, str] | None = None
    """``(module, extra)``: the optional dependency the head imports and the extra that installs it."""
    check: Callable[[HeadConfig], None] | None = None
    """Raises a ValueError for a config this head cannot be built from (beyond HeadConfig's own rules)."""


def _light(config: HeadConfig, in_channels: Sequence[int]) -> SegHead:
    from recyclelora.models.heads.light import LightHead

    return LightHead(in_channels, num_classes=config.num_classes, channels=config.channels)


def _mask2former(config: HeadConfig, in_channels: Sequence[int]) -> SegHead:
    from recyclelora.models.heads.mask2former import Mask2FormerHead

    return Mask2FormerHead(in_channels, config)


def _check_mask2former_widths(config: HeadConfig) -> None:
    if config.channels % 32:
        raise InvalidInputError(
            f"HeadConfig.channels must be a multiple of 32 for Mask2Former (GroupNorm with 32 groups), "
            f"got {config.channels}."
        )
    for name in ("channels", "hidden_dim"):
        if getattr(config, name) % config.num_heads:
            raise InvalidInputError(
                f"HeadConfig.{name}={getattr(config, name)} must be divisible by "
                f"num_heads={config.num_heads}: change one of them."
            )


HEADS: dict[str, Head] = {
    entry.name: entry
    for entry in (
        Head("light", "light", "FPN, CPU runs", 128, _light),
        Head(
            "mask2former", "Mask2Former", "the paper's head", 256, _mask2former,
            extra=("transformers", "mask2former"), check=_check_mask2former_widths,
        ),
    )
}  # fmt: skip
