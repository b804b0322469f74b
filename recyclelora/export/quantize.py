"""int8 copies of an exported model by onnxruntime's quantization.

- ``static``: the matrix products (:data:`STATIC_OPS`) in int8, weights per output channel, their inputs with
  ranges calibrated on images the caller gives (source-domain windows of the exported size: the target domains
  stay unseen; the 99.999th percentile of each, not its extremes), as QDQ pairs that onnxruntime fuses into integer
  kernels. Layer norms, softmax and the rest stay fp32: quantizing them all cost the default model 0.63 mIoU, the
  products alone none, at about the same speed (docs/benchmarks.md);
- ``dynamic``: weights int8 ahead of time, each activation's range measured on every call (no calibration).

The model is first pre-processed as onnxruntime advises (shape inference and graph optimisation).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.transform_config import EvalTransformConfig
from recyclelora.data.transforms import EvalTransform
from recyclelora.errors import InvalidInputError, require_extra
from recyclelora.eval.predictors import ONNX_INPUT, OnnxPredictor, TorchPredictor
from recyclelora.eval.sliding import window_grid
from recyclelora.io import atomic_path

QuantMode = Literal["static", "dynamic"]
QUANT_MODES: tuple[str, ...] = ("static", "dynamic")
#: The ops static int8 quantizes.
STATIC_OPS: tuple[str, ...] = ("MatMul", "Gemm", "Conv")


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` protocol over batches of images."""

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self._batches: Iterator[torch.Tensor] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {ONNX_INPUT: np.ascontiguousarray(batch.float().numpy())}


def quantize_onnx(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mode: QuantMode,
    calibration: Iterable[torch.Tensor] | None = None,
) -> Path:
    """Write the int8 copy of the ONNX model ``source`` to ``out`` (atomically).

    ``calibration`` (``static`` only, required there): normalised ``(B, 3, H, W)`` batches of the model's input
    size whose activations set the int8 ranges.
    """
    if mode not in QUANT_MODES:
        raise InvalidInputError(f"int8 mode must be one of {QUANT_MODES}, got {mode!r}")
    if mode == "static" and calibration is None:
        raise InvalidInputError("static int8 needs calibration images: give source-domain images of the export size")
    quantization = require_extra("onnxruntime.quantization", "onnx", "int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ONNX's shape inference and ORT's graph optimisation; ORT's symbolic shape inference stops on the
        # exported segmentor ("Incomplete symbolic shape inference"), and with fixed spatial sizes it adds nothing
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        with atomic_path(out) as tmp:
            if mode == "static":
                quantization.quantize_static(
                    str(prepared), str(tmp), _Calibration(calibration), quant_format=quantization.QuantFormat.QDQ,
                    op_types_to_quantize=list(STATIC_OPS), per_channel=True,
                    activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                    calibrate_method=quantization.CalibrationMethod.Percentile,
                )  # fmt: skip
            else:
                quantization.quantize_dynamic(
                    str(prepared), str(tmp), per_channel=True, weight_type=quantization.QuantType.QInt8
                )
    return out


@dataclass(frozen=True)
class Int8Copy:
    """An int8 copy of an exported model: where it is, its size and how often its argmax equals torch's."""

    path: Path
    size_mb: float
    argmax_agreement: float


def int8_copy(
    model: torch.nn.Module,
    source: str | os.PathLike[str],
    mode: QuantMode,
    calibration: Iterable[torch.Tensor] | None,
    inputs: torch.Tensor,
) -> Int8Copy:
    """Quantize the export ``source`` of ``model`` into ``<name>.int8.onnx`` beside it (:func:`quantize_onnx`) and
    measure the share of ``inputs``' pixels whose argmax equals ``model``'s: a report, not a gate (int8 is not
    expected to match fp32 logits; score it on the targets)."""
    source = Path(source)
    out = quantize_onnx(source, source.with_name(f"{source.stem}.int8.onnx"), mode, calibration)
    agreement = OnnxPredictor(out)(inputs).argmax(1) == TorchPredictor(model)(inputs).argmax(1)
    return Int8Copy(out, out.stat().st_size / 2**20, float(agreement.float().mean()))


def calibration_windows(
    manifests: Iterable[str | os.PathLike[str]],
    transform: EvalTransformConfig,
    size: tuple[int, int],
    count: int,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """The first ``count`` windows of ``size`` (h, w) cut side by side from the images of ``manifests`` in order,
    preprocessed as evaluation does (``transform``), in batches of ``batch_size``."""
    if count < 1:
        raise InvalidInputError(f"calibration needs at least one window, got count={count}")
    windows: list[torch.Tensor] = []
    for manifest in manifests:
        dataset = SegmentationDataset(manifest, EvalTransform(transform))
        for index in range(len(dataset)):
            image = dataset[index]["image"]
            for top, bottom, left, right in window_grid(*image.shape[-2:], size, size):
                if (bottom - top, right - left) != tuple(size):  # an image smaller than the window
                    continue
                windows.append(image[:, top:bottom, left:right])
                if len(windows) == count:
                    return [torch.stack(windows[i : i + batch_size]) for i in range(0, count, batch_size)]
    if not windows:
        raise InvalidInputError(f"no calibration window of {size[0]}x{size[1]} in {list(manifests)}")
    return [torch.stack(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
