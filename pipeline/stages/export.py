"""Stage ``export``: the merged model as ONNX (input ``images`` of fixed size, dynamic batch), checked against
PyTorch on the first image of every target domain, resized to the exported size.

Parity is ``max|onnx - torch| / max|torch|`` and the share of pixels with the same argmax
(:func:`recyclelora.export.verify_onnx`); a model outside ``export.rtol`` / ``export.min_agreement`` fails the
stage.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.params import ExportConfig
from pipeline.stages._common import log_numbers, open_stage, write_json
from pipeline.tracking import log_small_artifacts
from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.transform_config import EvalTransformConfig
from recyclelora.data.transforms import EvalTransform
from recyclelora.export import export_onnx, verify_onnx
from recyclelora.models.segmentor import Segmentor


def parity_inputs(
    targets: tuple[str, ...], transform: EvalTransformConfig, size: tuple[int, int]
) -> torch.Tensor:
    """The first image of each target manifest, normalised and resized bilinearly to ``size`` (h, w)."""
    images = [SegmentationDataset(target, EvalTransform(transform))[0]["image"] for target in targets]
    return torch.cat(
        [F.interpolate(image[None], size=size, mode="bilinear", align_corners=False) for image in images]
    )


def export_checkpoint(
    checkpoint: Path, out: Path, config: ExportConfig, inputs: torch.Tensor
) -> dict[str, float]:
    """Export ``checkpoint`` to ``out`` and verify it on ``inputs``; returns the parity and the file size."""
    model = Segmentor.from_checkpoint(checkpoint)
    model.eval()
    export_onnx(model, out, torch.zeros(1, 3, config.height, config.width), opset=config.opset)
    parity = verify_onnx(model, out, inputs, rtol=config.rtol, min_agreement=config.min_agreement)
    return asdict(parity) | {"size_mb": out.stat().st_size / 2**20}


def run_export(params_path: Path, checkpoint: Path, out: Path, metrics: Path) -> dict[str, float]:
    """The ``export`` stage: write the ONNX file (atomically, by the exporter) and its parity metrics; log the
    metrics, and the model when it is small enough, to MLflow."""
    with open_stage("export", params_path) as params:
        config = params.export
        inputs = parity_inputs(
            params.run.eval.targets, params.run.data.val_transform, (config.height, config.width)
        )
        record = export_checkpoint(checkpoint, out, config, inputs)
        write_json(metrics, record)
        log_numbers(record)
        log_small_artifacts([out, metrics])
    return record
