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

    width: int = field(default=512, metadata={"ge": 32})
    """Image width in pixels."""
    height: int = field(default=256, metadata={"ge": 16})
    """Image height in pixels."""
    source_train: int = field(default=300, metadata={"ge": 1})
    """Images in the source domain's ``train`` split."""
    source_val: int = field(default=50, metadata={"ge": 1})
    """Images in the source domain's ``val`` split."""
    target_val: int = field(default=60, metadata={"ge": 1})
    """Images in each target domain's ``val`` split."""
    targets: tuple[str, ...] = TARGET_DOMAINS
    """Target domains to render (names from :data:`TARGET_DOMAINS`)."""

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
