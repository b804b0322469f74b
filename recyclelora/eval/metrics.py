"""Segmentation metrics from a confusion matrix (rows = ground truth, columns = prediction).

For class ``c`` with ``TP = M[c, c]``, ``FP = sum_g M[g, c] - TP`` and ``FN = sum_p M[c, p] - TP``:
``IoU_c = TP / (TP + FP + FN)``, ``Acc_c = TP / (TP + FN)``, pixel accuracy ``aAcc = trace(M) / sum(M)``.
A class absent from both prediction and ground truth over the whole set has ``IoU = NaN`` and is left out of
``mIoU = nanmean(IoU)``: it counts neither as 0 nor as 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from recyclelora.data.classes import CLASS_NAMES, IGNORE_INDEX
from recyclelora.errors import InvalidInputError


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Count ``(ground truth, prediction)`` pairs into a ``(C, C)`` int64 matrix with one ``bincount``.

    Pixels whose target is ``ignore_index`` are not counted. Predictions must lie in ``[0, C)`` everywhere
    and targets in ``[0, C)`` or equal ``ignore_index``; anything else raises ``ValueError``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}"
        )
    for name, tensor in (("prediction", pred), ("target", target)):
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(
                f"{name} must hold integer class ids, got dtype {tensor.dtype}: take the argmax first"
            )
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise InvalidInputError(
            f"prediction values span [{int(pred.min())}, {int(pred.max())}] but must lie in [0, {num_classes}): "
            "the model's class count and num_classes disagree"
        )
    valid = target != ignore_index
    pred, target = pred[valid].long(), target[valid].long()
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise InvalidInputError(
            f"target values span [{int(target.min())}, {int(target.max())}] outside [0, {num_classes}) "
            f"and are not ignore_index={ignore_index}: map the labels to trainIds first"
        )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_counts(confusion: torch.Tensor) -> torch.Tensor:
    """``(C, 3)`` ``(TP, FP, FN)`` per class of a ``(C, C)`` confusion matrix (TP = diagonal, FP = column sum -
    TP, FN = row sum - TP)."""
    tp = confusion.diagonal()
    return torch.stack([tp, confusion.sum(0) - tp, confusion.sum(1) - tp], dim=-1)


def iou_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """``TP / (TP + FP + FN)`` elementwise; NaN where the union is 0 (absent from prediction and truth)."""
    union = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` confusion matrix over batches; ``matrix`` can be ``all_reduce``-d across ranks."""

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add the pixels of one prediction/target pair (any matching shape); returns the pair's own matrix."""
        matrix = confusion_matrix(
            pred.to(self.matrix.device), target.to(self.matrix.device), self.num_classes, self.ignore_index
        )
        self.matrix += matrix
        return matrix

    def merge(self, other: ConfusionMatrix | torch.Tensor) -> None:
        """Add another accumulator's (or a raw ``(C, C)`` tensor's) counts to this one."""
        matrix = other.matrix if isinstance(other, ConfusionMatrix) else other
        if matrix.shape != self.matrix.shape:
            raise ValueError(
                f"cannot merge a {tuple(matrix.shape)} matrix into a {tuple(self.matrix.shape)} one"
            )
        self.matrix += matrix.to(self.matrix)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks of the default process group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self, class_names: Sequence[str] = CLASS_NAMES) -> SegMetrics:
        """Metrics of the counts accumulated so far."""
        return SegMetrics.from_confusion(self.matrix, class_names)


@dataclass(frozen=True, eq=False)
class SegMetrics:
    """Per-class and summary metrics of one confusion matrix (see the module docstring for the formulas)."""

    class_names: tuple[str, ...]
    confusion: np.ndarray  # (C, C) int64, rows = ground truth, columns = prediction
    iou: np.ndarray  # (C,) float64, NaN for classes absent from prediction and ground truth
    acc: np.ndarray  # (C,) float64, NaN for classes absent from the ground truth
    miou: float
    aacc: float
    macc: float

    @classmethod
    def from_confusion(
        cls, confusion: torch.Tensor | np.ndarray, class_names: Sequence[str] = CLASS_NAMES
    ) -> SegMetrics:
        matrix = (confusion.cpu().numpy() if isinstance(confusion, torch.Tensor) else confusion).astype(
            np.int64
        )
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"confusion matrix must be square (C, C), got shape {matrix.shape}")
        if len(class_names) != matrix.shape[0]:
            raise ValueError(
                f"{len(class_names)} class names given for a {matrix.shape[0]}-class confusion matrix: "
                "pass one name per class"
            )
        total = int(matrix.sum())
        if total == 0:
            raise InvalidInputError(
                "the confusion matrix counts no pixel (every label was ignored): nothing to score"
            )
        tp = np.diag(matrix).astype(np.float64)
        iou = iou_from_counts(tp, matrix.sum(0) - tp, matrix.sum(1) - tp)
        gt = matrix.sum(1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = np.where(gt > 0, tp / gt, np.nan)
        return cls(
            class_names=tuple(class_names),
            confusion=matrix,
            iou=iou,
            acc=acc,
            miou=float(np.nanmean(iou)),
            aacc=float(tp.sum() / total),
            macc=float(np.nanmean(acc)),
        )

    @property
    def tp(self) -> np.ndarray:
        return np.diag(self.confusion).copy()

    @property
    def fp(self) -> np.ndarray:
        return self.confusion.sum(0) - self.tp

    @property
    def fn(self) -> np.ndarray:
        return self.confusion.sum(1) - self.tp
