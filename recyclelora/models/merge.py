"""Merge a trained checkpoint into a plain timm backbone + head, verified before it is written.

Each adapted linear becomes ``W = W_res + s (B_main A_main + B_sub A_sub)``
(:func:`recyclelora.adapters.merge_adapters`), so the merged model has the pretrained model's latency and needs
no backbone weights to load. The merged file appears only after the model reloaded from it reproduces the
unmerged model's logits on a fixed random batch: ``max |merged - unmerged| / max |unmerged| <= MERGE_RTOL``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from recyclelora.adapters.inject import merge_adapters
from recyclelora.errors import InvalidInputError, UserError
from recyclelora.io import atomic_path, sha256_file
from recyclelora.models.checkpoint import save_segmentor
from recyclelora.models.segmentor import Segmentor

#: Largest ``max |merged - unmerged| / max |unmerged|`` over the logits that a merge may change.
MERGE_RTOL = 1e-4
#: Images in the fixed random batch the parity checks run on.
PARITY_BATCH = 2


class MergeParityError(UserError):
    """The merged model's logits differ from the unmerged model's beyond :data:`MERGE_RTOL` (a bug)."""


@dataclass(frozen=True)
class MergeResult:
    """The merged file, the SHA-256 of its source and the measured ``max |merged - unmerged| / max |unmerged|``."""

    path: Path
    source_sha256: str
    relative_diff: float


def parity_input(height: int, width: int, batch: int = PARITY_BATCH, seed: int = 0) -> torch.Tensor:
    """A fixed normalised-image-like batch ``(batch, 3, height, width)`` drawn from N(0, 1) with ``seed``."""
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def relative_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``: scale-free, unlike a per-element relative error, which logits
    near 0 make meaningless."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float((actual - expected).abs().max() / scale)


def merge_checkpoint(
    source: str | Path, destination: str | Path, *, backbone_weights: str | None = None
) -> MergeResult:
    """Fold ``source``'s adapters into its backbone and write the merged checkpoint ``destination``.

    The file records the source's SHA-256 (``source_sha256``) and its trainable parameter counts; it is
    written atomically and only if the model reloaded from it passes the logit check (else
    :class:`MergeParityError` and nothing is written). A merged source is refused.
    """
    model = Segmentor.from_checkpoint(source, backbone_weights=backbone_weights)
    info = model.checkpoint_info
    if info.merged:
        raise InvalidInputError(f"{source} is already merged: merging twice is refused; use it as it is")
    images = parity_input(info.config.backbone.img_size, info.config.backbone.img_size)
    with torch.inference_mode():
        expected = model.eval()(images)
    trained = json.dumps(model.trainable_parameters())
    merge_adapters(model.backbone.vit)
    source_sha256 = sha256_file(source)
    with atomic_path(destination) as tmp:
        save_segmentor(
            tmp,
            model,
            info.config,
            backbone_sha256=info.backbone_sha256,
            merged=True,
            classes=info.classes,
            metadata={"source_sha256": source_sha256, "trainable_parameters": trained},
        )
        merged = Segmentor.from_checkpoint(tmp)
        with torch.inference_mode():
            diff = relative_diff(merged.eval()(images), expected)
        if not diff <= MERGE_RTOL:
            raise MergeParityError(
                f"merged logits differ from the unmerged model's by {diff:.3g} of the largest logit (allowed "
                f"{MERGE_RTOL:g}): nothing was written; report this as a bug"
            )
    return MergeResult(Path(destination), source_sha256, diff)
