"""Stage ``evaluate``: score the merged model on every target domain (``eval.targets``).

One confusion matrix per target, ``IoU_c = TP / (TP + FP + FN)``, mIoU over the classes present, the setting's
score = unweighted mean over targets. The full reports (``metrics.json`` with per-class IoU, a Parquet
per-class table, confusion matrices, a per-class IoU chart) go to the reports folder; the DVC metric file
keeps mIoU, aAcc and mAcc per target and their mean, so ``dvc exp show`` stays readable.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.stages._common import log_numbers, open_stage, write_json
from pipeline.tracking import log_small_artifacts
from recyclelora.config import EvalConfig
from recyclelora.data.check import ensure_checked
from recyclelora.data.classes import ClassSet
from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.transform_config import EvalTransformConfig
from recyclelora.data.transforms import EvalTransform
from recyclelora.eval.evaluate import EvalResult, evaluate
from recyclelora.eval.predictors import TorchPredictor
from recyclelora.eval.reports import metrics_dict, write_reports
from recyclelora.eval.sliding import SlidingWindowConfig
from recyclelora.io import atomic_dir
from recyclelora.models.segmentor import Segmentor
from recyclelora.train.distributed import resolve_device

SUMMARY_KEYS = ("mIoU", "aAcc", "mAcc", "num_images")


def target_sets(
    config: EvalConfig, transform: EvalTransformConfig, classes: ClassSet
) -> dict[str, SegmentationDataset]:
    """Each manifest of ``config.targets`` (named by file stem), resized by its own ``config.resize`` rule or
    else by ``transform``'s, its labels as ids of the model's ``classes``."""
    return {
        Path(target).stem: SegmentationDataset(
            target,
            EvalTransform(config.target_transform(target, transform)),
            max_pixels=config.max_pixels,
            classes=classes,
        )
        for target in config.targets
    }


def sliding_config(config: EvalConfig) -> SlidingWindowConfig | None:
    """The protocol's windows, or ``None`` for whole-image inference."""
    return None if config.whole else SlidingWindowConfig((config.crop, config.crop), (config.stride, config.stride))


def evaluate_targets(
    checkpoint: Path,
    config: EvalConfig,
    transform: EvalTransformConfig,
    device: str,
    *,
    progress: bool = True,
) -> EvalResult:
    """Evaluate ``checkpoint`` on each target of ``config`` (:func:`target_sets`, :func:`sliding_config`)."""
    predictor = TorchPredictor(Segmentor.from_checkpoint(checkpoint), resolve_device(device))
    classes = predictor.classes
    return evaluate(
        predictor,
        target_sets(config, transform, classes),
        sliding=sliding_config(config),
        classes=classes,
        device=predictor.device,
        progress=progress,
    )


def summary(result: EvalResult) -> dict[str, object]:
    """``{target: {mIoU, aAcc, mAcc, num_images}, "mean_mIoU": ...}`` (fractions; NaN as None)."""
    full = metrics_dict(result)
    return {
        name: {key: value for key, value in entry.items() if key in SUMMARY_KEYS}
        if isinstance(entry, dict)
        else entry
        for name, entry in full.items()
    }


def run_evaluate(
    params_path: Path, checkpoint: Path, reports: Path, metrics: Path, *, progress: bool = True
) -> dict:
    """The ``evaluate`` stage: check the target data (cached), write the reports folder atomically and the
    metric file; log both to MLflow."""
    with open_stage("evaluate", params_path) as params:
        ensure_checked(params.run.eval.targets, progress=progress, max_pixels=params.run.eval.max_pixels)
        result = evaluate_targets(
            checkpoint,
            params.run.eval,
            params.run.data.val_transform,
            params.run.train.device,
            progress=progress,
        )
        with atomic_dir(reports) as tmp:
            write_reports(result, tmp)
        scores = summary(result)
        write_json(metrics, scores)
        log_numbers(
            {f"mIoU/{name}": m.miou for name, m in result.metrics.items()} | {"mean_mIoU": result.mean_miou}
        )
        log_small_artifacts([reports, metrics])
    return scores
