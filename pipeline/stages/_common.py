"""What every stage shares: validated params + an MLflow child run, the converted backbone, JSON and metrics."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow

from pipeline.dvcfile import stage_params
from pipeline.params import PipelineParams, load_pipeline_params
from pipeline.tracking import stage_run
from recyclelora.io import atomic_write_text
from recyclelora.models.config import ModelConfig

#: The ``weights`` stage's file in its output folder: the backbone in timm's layout, at the model's grid.
BACKBONE_FILE = "backbone.safetensors"


@contextlib.contextmanager
def open_stage(
    stage: str, params_path: str | Path, *, resume_child: bool = False
) -> Iterator[PipelineParams]:
    """Validate all of ``params_path`` (nothing runs on invalid params), then run as MLflow child ``stage``
    (:func:`~pipeline.tracking.stage_run`: stop signals raise ``Interrupted``, a lost server costs nothing).

    The child run records the params the stage reads: its ``params:`` in the workspace's dvc.yaml. The DVC
    workspace is the folder of ``params_path``. ``resume_child`` continues the stage's unfinished child run of
    the same pipeline (a resumed training: one loss curve).
    """
    params_path = Path(params_path)
    params = load_pipeline_params(params_path)
    read = params.sections(*stage_params(stage, params_path))
    root = params_path.resolve().parent
    with stage_run(stage, read, repo_root=root, resume_child=resume_child):
        yield params


def with_backbone(model: ModelConfig, weights_dir: str | Path) -> ModelConfig:
    """``model`` reading its backbone from the ``weights`` stage's output, not ``model.backbone.weights``."""
    file = Path(weights_dir) / BACKBONE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: run the weights stage first (`dvc repro weights`)")
    return replace(model, backbone=replace(model.backbone, weights=file.as_posix()))


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically (NaN is refused: write ``None``)."""
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    return Path(path)


def log_numbers(values: Mapping[str, Any], step: int | None = None) -> None:
    """Log the finite numbers of ``values`` as MLflow metrics (``None``, NaN, strings are skipped)."""
    numbers = {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }
    if numbers:
        mlflow.log_metrics(numbers, step=step)
