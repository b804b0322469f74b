"""The embedded benchmark's size and domain names, free of numpy and PIL: the CLI's ``data synth`` options
(and ``params.yaml``'s ``datasets.synth``) read them without importing the renderers.

The renderers live in :mod:`recyclelora.data.synth_domains`, whose ``DOMAINS`` must list exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

SOURCE_DOMAIN = "synth_src"
#: The target domains, in the order :data:`recyclelora.data.synth_domains.DOMAINS` lists their renderers.
TARGET_DOMAINS: tuple[str, ...] = ("synth_tex", "synth_night", "synth_fog", "synth_palette")


@dataclass(frozen=True)
class SynthConfig:
    """Size and composition of the embedded benchmark."""

    width: int = field(
        default=512,
        metadata={"help": "image width in pixels (a multiple of the patch size: no padding)", "ge": 32},
    )
    height: int = field(default=256, metadata={"help": "image height in pixels, likewise", "ge": 16})
    source_train: int = field(
        default=300, metadata={"help": f"training images of the source domain {SOURCE_DOMAIN}", "ge": 1}
    )
    source_val: int = field(
        default=50, metadata={"help": f"validation images of {SOURCE_DOMAIN} (data.val)", "ge": 1}
    )
    target_val: int = field(
        default=60, metadata={"help": "images of each target domain, its val split (eval.targets)", "ge": 1}
    )
    targets: tuple[str, ...] = field(
        default=TARGET_DOMAINS,
        metadata={"help": f"target domains to render, of {', '.join(TARGET_DOMAINS)}"},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        validate_fields(self)
        unknown = sorted(set(self.targets) - set(TARGET_DOMAINS))
        if not self.targets or unknown or len(set(self.targets)) != len(self.targets):
            raise InvalidInputError(
                f"targets={self.targets!r} is not a non-empty list of distinct target domains "
                f"(unknown: {unknown}): choose from {list(TARGET_DOMAINS)}"
            )

    def splits(self) -> dict[str, dict[str, int]]:
        """Image count per domain and split."""
        counts = {SOURCE_DOMAIN: {"train": self.source_train, "val": self.source_val}}
        counts.update({target: {"val": self.target_val} for target in self.targets})
        return counts
