"""The embedded benchmark's size and domain names, free of numpy and PIL: the CLI's ``data synth`` options
(and ``params.yaml``'s ``datasets.synth``) read them without importing the renderers.

The renderers live in :mod:`recyclelora.data.synth_domains`, whose ``DOMAINS`` must list exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_DOMAIN = "synth_src"
#: The target domains, in the order :data:`recyclelora.data.synth_domains.DOMAINS` lists their renderers.
TARGET_DOMAINS: tuple[str, ...] = ("synth_tex", "synth_night", "synth_fog", "synth_palette")


@dataclass(frozen=True)
class SynthConfig:
    """Size and composition of the embedded benchmark."""

    width: int = 512
    """Image width in pixels."""
    height: int = 256
    """Image height in pixels."""
    source_train: int = 300
    """Images in the source domain's ``train`` split."""
    source_val: int = 50
    """Images in the source domain's ``val`` split."""
    target_val: int = 60
    """Images in each target domain's ``val`` split."""
    targets: tuple[str, ...] = TARGET_DOMAINS
    """Target domains to render (names from :data:`TARGET_DOMAINS`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.width < 32 or self.height < 16:
            raise ValueError(
                f"image size {self.width}x{self.height} is too small: use width >= 32 and height >= 16"
            )
        for name in ("source_train", "source_val", "target_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        unknown = sorted(set(self.targets) - set(TARGET_DOMAINS))
        if not self.targets or unknown or len(set(self.targets)) != len(self.targets):
            raise ValueError(
                f"targets={self.targets!r} is not a non-empty list of distinct target domains "
                f"(unknown: {unknown}): choose from {list(TARGET_DOMAINS)}"
            )

    def splits(self) -> dict[str, dict[str, int]]:
        """Image count per domain and split."""
        counts = {SOURCE_DOMAIN: {"train": self.source_train, "val": self.source_val}}
        counts.update({target: {"val": self.target_val} for target in self.targets})
        return counts
