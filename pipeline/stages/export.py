"""Stage ``export``: the merged model as ONNX (``<out>/model.onnx``, input ``images`` of fixed size, dynamic
batch), checked against PyTorch on the first image of every target domain, resized to the exported size; with
``export.int8``, also its int8 copy (``<out>/model.int8.onnx``).

Parity is ``max|onnx - torch| / max|torch|`` and the share of pixels with the same argmax
(:func:`recyclelora.export.verify_onnx`); a model outside ``export.rtol`` / ``export.min_agreement`` fails the
stage. The int8 copy (:func:`recyclelora.export.int8_copy`) is calibrated, when static, on ``export.int8_windows``
windows of the training manifests (``data.train``: the source domain, never a target) and reports its argmax
agreement with PyTorch on the same images, without a gate.
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
from recyclelora.export import calibration_windows, export_onnx, int8_copy, verify_onnx
from recyclelora.models.segmentor import Segmentor


def parity_inputs(
    targets: tuple[str, ...], transform: EvalTransformConfig, size: tuple[int, int]
) -> torch.Tensor:
    """The first image of each target manifest, normalised and resized bilinearly to ``size`` (h, w)."""
    images = [SegmentationDataset(target, EvalTransform(transform))[0]["image"] for target in targets]
    return torch.cat(
        [F.interpolate(image[None], size=size, mode="bilinear", align_corners=False) for image in images]
    )


#: The files the stage writes into its output folder.
ONNX_FILE = "model.onnx"


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    config: ExportConfig,
    inputs: torch.Tensor,
    calibration: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Export ``checkpoint`` to the file ``out`` and verify it on ``inputs``; with ``config.int8``, write its int8
    copy beside it (static: calibrated on ``calibration``). Returns the parity and the file sizes."""
    model = Segmentor.from_checkpoint(checkpoint)
    model.eval()
    export_onnx(model, out, torch.zeros(1, 3, config.height, config.width), opset=config.opset)
    parity = verify_onnx(model, out, inputs, rtol=config.rtol, min_agreement=config.min_agreement)
    record = asdict(parity) | {"size_mb": out.stat().st_size / 2**20}
    if config.int8 is not None:
        copy = int8_copy(model, out, config.int8, calibration, inputs)
        record |= {"int8_argmax_agreement": copy.argmax_agreement, "int8_size_mb": copy.size_mb}
    return record


def run_export(params_path: Path, checkpoint: Path, out: Path, metrics: Path) -> dict[str, float]:
    """The ``export`` stage: write the ONNX file (and its int8 copy) into the folder ``out`` (each atomically, by
    the exporter and the quantizer) and their parity metrics; log the metrics, and the models when they are small
    enough, to MLflow."""
    with open_stage("export", params_path) as params:
        config, data = params.export, params.run.data
        size = (config.height, config.width)
        inputs = parity_inputs(params.run.eval.targets, data.val_transform, size)
        calibration = None
        if config.int8 == "static":
            calibration = calibration_windows(data.train, data.val_transform, size, config.int8_windows)
        out.mkdir(parents=True, exist_ok=True)
        record = export_checkpoint(checkpoint, out / ONNX_FILE, config, inputs, calibration)
        write_json(metrics, record)
        log_numbers(record)
        log_small_artifacts([*sorted(out.glob("*.onnx")), metrics])
    return record
