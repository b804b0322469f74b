"""Score a predictor on several target datasets: one confusion matrix per dataset, one image at a time.

A sample is a dict with ``image`` (float (3, h, w), normalised), ``label`` (int (H, W), 255 = ignore), ``name``
(file stem or relative name, used for saved predictions) and ``dataset``. The label keeps its original size; an
image its transform resized to a test size ``h x w`` (mmseg's test pipeline) is scored at that size and its
scores are resized back to ``H x W`` (bilinear) before the argmax. The setting's score is the unweighted mean of
the datasets' mIoU. Each image's per-class ``(TP, FP, FN)`` is kept too (for paired bootstraps): summed over a
dataset's images it is that dataset's counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from recyclelora.data.classes import CITYSCAPES_CLASSES, IGNORE_INDEX, ClassSet
from recyclelora.data.transform_config import IMAGENET_MEAN, IMAGENET_STD
from recyclelora.errors import InvalidInputError
from recyclelora.eval.metrics import ConfusionMatrix, SegMetrics, class_counts
from recyclelora.eval.sliding import Predict, SlidingWindowConfig, slide_inference, whole_inference
from recyclelora.io import atomic_path

OVERLAY_ALPHA = 0.5
#: The field's test protocol: 512 x 512 windows, stride 341.
PROTOCOL_SLIDING = SlidingWindowConfig()


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Metrics per target dataset, in the order the datasets were given, and per-image counts in sample
    order."""

    metrics: dict[str, SegMetrics]
    num_images: dict[str, int]
    image_names: dict[str, tuple[str, ...]]  # each sample's ``name``
    image_counts: dict[str, np.ndarray]  # (images, C, 3) int64 (TP, FP, FN) per image and class

    @property
    def mean_miou(self) -> float:
        """Unweighted mean of the datasets' mIoU (the setting's score)."""
        return float(np.mean([m.miou for m in self.metrics.values()]))

    @property
    def class_names(self) -> tuple[str, ...]:
        return next(iter(self.metrics.values())).class_names


def _relative_path(value: str, what: str) -> PurePosixPath:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or path.name in ("", "."):
        raise InvalidInputError(
            f"{what} {value!r} must be a non-empty relative path without '..' to save predictions"
        )
    return path


def _check_sample(sample: Mapping, dataset: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    image, label, name = sample["image"], sample["label"], sample["name"]
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(
            f"{dataset}/{name}: image must be a normalised float (3, H, W) tensor, got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    if label.ndim != 2:
        raise ValueError(
            f"{dataset}/{name}: label must be an (H, W) map of trainIds, got {tuple(label.shape)}"
        )
    return image, label, name


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """``x * std + mean`` of a normalised (3, H, W) image, as an (H, W, 3) uint8 RGB array."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    pixels = image.detach().to("cpu", torch.float32) * std_t + mean_t
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def overlay(
    image: np.ndarray, pred: np.ndarray, alpha: float = OVERLAY_ALPHA, classes: ClassSet = CITYSCAPES_CLASSES
) -> np.ndarray:
    """Blend the colours of ``classes`` at ``pred`` over an (H, W, 3) uint8 image: ``(1 - a) image + a colour``."""
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * classes.colorize(pred).astype(np.float32)
    return blended.round().astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


class PredictionWriter:
    """Writes ``root/<dataset>/<name>.png`` (8-bit class ids) and, with ``overlays``, the colours of ``classes``
    blended over the de-normalised image at ``root/<dataset>_overlay/<name>.png``; refuses unsafe or repeated
    names."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        overlays: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        classes: ClassSet = CITYSCAPES_CLASSES,
    ) -> None:
        self.root = Path(root)
        self.overlays = overlays
        self.mean, self.std = mean, std
        self.classes = classes
        self._written: set[tuple[str, str]] = set()

    def write(self, dataset: str, name: str, pred: torch.Tensor, image: torch.Tensor) -> None:
        folder = _relative_path(dataset, "dataset name")
        relative = _relative_path(name, "sample name")
        if (dataset, name) in self._written:
            raise InvalidInputError(f"{dataset}: two samples are named {name!r}; names must be unique")
        self._written.add((dataset, name))
        pred_np = pred.to("cpu", torch.uint8).numpy()
        _save_png(pred_np, self.root / folder / f"{relative}.png")
        if self.overlays:
            blended = overlay(denormalize(image, self.mean, self.std), pred_np, classes=self.classes)
            _save_png(blended, self.root / f"{folder}_overlay" / f"{relative}.png")


def evaluate(
    predict: Predict,
    datasets: Mapping[str, Iterable[Mapping]],
    *,
    sliding: SlidingWindowConfig | None = PROTOCOL_SLIDING,
    classes: ClassSet = CITYSCAPES_CLASSES,
    ignore_index: int = IGNORE_INDEX,
    device: torch.device | str = "cpu",
    save_predictions: str | os.PathLike[str] | None = None,
    overlays: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``predict`` on every dataset, whose labels are ids of ``classes`` (those ``predict`` scores);
    ``sliding=None`` runs whole-image inference.

    Images, scores and confusion matrices live on ``device`` (give the model's device to avoid copies).
    With ``save_predictions``, each image's argmax is saved by a :class:`PredictionWriter` (``overlays``,
    ``mean`` and ``std`` configure its colour overlays).
    """
    if not datasets:
        raise InvalidInputError("no dataset to evaluate: pass at least one {name: samples} entry")
    if overlays and save_predictions is None:
        raise InvalidInputError("overlays=True needs save_predictions: give a folder to write them to")
    writer = None if save_predictions is None else PredictionWriter(save_predictions, overlays, mean, std, classes)
    num_classes = len(classes)
    metrics: dict[str, SegMetrics] = {}
    counts: dict[str, int] = {}
    image_names: dict[str, tuple[str, ...]] = {}
    image_counts: dict[str, np.ndarray] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar, torch.inference_mode():
        for dataset, samples in datasets.items():
            task = bar.add_task(f"eval {dataset}", total=len(samples) if isinstance(samples, Sized) else None)
            matrix = ConfusionMatrix(num_classes, ignore_index, device)
            names: list[str] = []
            per_image: list[torch.Tensor] = []
            for sample in samples:
                image, label, name = _check_sample(sample, dataset)
                batch = image.unsqueeze(0).to(device)
                if sliding is None:
                    scores = whole_inference(predict, batch, num_classes)
                else:
                    scores = slide_inference(predict, batch, num_classes, sliding)
                if scores.shape[-2:] != label.shape:  # scored at a test size: back to the label's
                    scores = F.interpolate(
                        scores, size=tuple(label.shape), mode="bilinear", align_corners=False
                    )
                    batch = F.interpolate(
                        batch, size=tuple(label.shape), mode="bilinear", align_corners=False
                    )
                pred = scores.argmax(1)[0]
                per_image.append(class_counts(matrix.update(pred, label)))
                names.append(name)
                if writer is not None:
                    writer.write(dataset, name, pred, batch[0])
                bar.advance(task)
            if not names:
                raise InvalidInputError(f"dataset {dataset!r} yielded no samples: check its manifest and split")
            metrics[dataset] = matrix.compute(classes.names)
            counts[dataset] = len(names)
            image_names[dataset] = tuple(names)
            image_counts[dataset] = torch.stack(per_image).cpu().numpy()
    return EvalResult(metrics=metrics, num_images=counts, image_names=image_names, image_counts=image_counts)
