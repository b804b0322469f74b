"""The segmentor's config: backbone, how it is tuned (adapters, frozen, full), head. Imports no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from recyclelora.adapters.config import AdapterConfig
from recyclelora.data.classes import ClassSet
from recyclelora.errors import InvalidInputError
from recyclelora.models.backbone_config import BackboneConfig
from recyclelora.models.heads.config import HeadConfig
from recyclelora.validation import validate_fields

Tuning = Literal["adapters", "frozen", "full"]
#: Backbone settings added after checkpoints were first written, at the values those checkpoints used.
LEGACY_BACKBONE: dict[str, str] = {"pyramid": "learned", "embed_resample": "pinv"}


@dataclass(frozen=True)
class ModelConfig:
    """The segmentor: backbone, decode head, and how the backbone is tuned."""

    backbone: BackboneConfig = field(
        default_factory=BackboneConfig, metadata={"help": "the pretrained ViT (stage weights converts it)"}
    )
    head: HeadConfig = field(
        default_factory=HeadConfig,
        metadata={"help": "the decode head; its Mask2Former fields default to the paper's recipe"},
    )
    tuning: Tuning = field(
        default="adapters",
        metadata={
            "help": "adapters (trains the adapters of model.adapter, the backbone otherwise frozen), frozen "
            "(no backbone parameter) or full (all of them); the neck and head always train"
        },
    )
    adapter: AdapterConfig = field(
        default_factory=AdapterConfig,
        metadata={"help": "dual adapters of every adapted linear (model.tuning=adapters)"},
    )

    def __post_init__(self) -> None:
        validate_fields(self, "model")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": asdict(self.backbone) | {"out_indices": _list(self.backbone.out_indices)},
            "head": asdict(self.head),
            "tuning": self.tuning,
            "adapter": self.adapter.to_dict(),
        }

    def for_classes(self, classes: ClassSet) -> ModelConfig:
        """This config with ``head.num_classes`` set to the size of ``classes`` (a null count follows the data);
        a count given and different is refused."""
        count = self.head.num_classes
        if count is not None and count != len(classes):
            raise InvalidInputError(
                f"model.head.num_classes is {count} but the training data has {len(classes)} classes "
                f"{list(classes.names)}: set it to {len(classes)}, or to null to follow the data"
            )
        return replace(self, head=replace(self.head, num_classes=len(classes)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config of :meth:`to_dict`; keys that older checkpoints lack get the behaviour they were
        trained with (:data:`LEGACY_BACKBONE`), not today's defaults."""
        return cls(
            backbone=BackboneConfig(**(LEGACY_BACKBONE | data["backbone"])),
            head=HeadConfig(**data["head"]),
            tuning=data["tuning"],
            adapter=AdapterConfig(**data["adapter"]),
        )


def _list(value: tuple[int, ...] | None) -> list[int] | None:
    return None if value is None else list(value)
