"""The decode heads, each defined once: name, table label, what it is, the width of its feature maps when
``HeadConfig.channels`` is unset, the extra it needs and the config rules it adds
(:mod:`recyclelora.models.heads.build` builds them).

``light`` is an FPN head for CPU runs; ``mask2former`` is the paper's head, built from transformers' modules
(the ``mask2former`` extra). This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recyclelora.errors import InvalidInputError

if TYPE_CHECKING:
    from recyclelora.models.heads.config import HeadConfig


@dataclass(frozen=True)
class Head:
    """One decode head (see the module docstring)."""

    name: str
    label: str
    description: str
    channels: int
    """Width of the head's feature maps when ``HeadConfig.channels`` is left unset."""
    extra: tuple[str, str] | None = None
    """``(module, extra)``: the optional dependency the head imports and the extra that installs it."""
    check: Callable[[HeadConfig], None] | None = None
    """Raises a ValueError for a config this head cannot be built from (beyond HeadConfig's own rules)."""


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
        Head("light", "light", "small FPN + cross-entropy, for CPU runs", 128),
        Head(
            "mask2former", "Mask2Former", "the paper's head", 256,
            extra=("transformers", "mask2former"), check=_check_mask2former_widths,
        ),
    )
}  # fmt: skip
