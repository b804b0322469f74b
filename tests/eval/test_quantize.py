"""int8 copies of an exported model: static (calibrated) and dynamic, smaller, close to fp32, refused without
calibration; calibration windows cut as evaluation cuts them."""

from __future__ import annotations

import typing
from pathlib import Path

import onnx
import pytest
import torch

from pipeline.params import Int8Mode
from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.transform_config import EvalTransformConfig
from recyclelora.data.transforms import EvalTransform
from recyclelora.eval.predictors import OnnxPredictor
from recyclelora.export import QUANT_MODES, calibration_windows, int8_copy, quantize_onnx
from tests.cli import write_dataset
from tests.eval.test_onnx import SIZE, exported, model  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.slow


def _int8_initialisers(path: Path) -> int:
    return sum(init.data_type == onnx.TensorProto.INT8 for init in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_copy_is_smaller_and_agrees_with_fp32(mode, exported, tmp_path) -> None:  # noqa: F811
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(4, 3, SIZE, SIZE, generator=generator) for _ in range(4)]
    out = quantize_onnx(exported, tmp_path / "int8.onnx", mode, calibration if mode == "static" else None)
    assert _int8_initialisers(out) > 0  # the matrices are stored as int8
    assert out.stat().st_size < 0.6 * Path(exported).stat().st_size
    images = torch.randn(3, 3, SIZE, SIZE, generator=generator)
    fp32, int8 = OnnxPredictor(exported, ["CPUExecutionProvider"])(images), OnnxPredictor(out)(images)
    assert int8.shape == fp32.shape
    agreement = (int8.argmax(1) == fp32.argmax(1)).float().mean().item()
    assert agreement > 0.8, agreement
    assert not list(tmp_path.glob(".*.tmp"))


def test_static_int8_quantizes_the_matrix_products_only(exported, tmp_path) -> None:  # noqa: F811
    """The static copy's int8 weights are those of MatMul, Gemm and Conv nodes: layer norms keep fp32 weights,
    and no op but those takes int8 inputs (quantizing every op cost 0.63 mIoU on the default model)."""
    calibration = [torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))]
    graph = onnx.load(str(quantize_onnx(exported, tmp_path / "int8.onnx", "static", calibration))).graph
    int8 = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.INT8}
    weights = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in int8}
    consumers = {node.op_type for node in graph.node if weights & set(node.input)}
    assert consumers and consumers <= {"MatMul", "Gemm", "Conv"}, consumers
    assert not any(node.op_type == "LayerNormalization" and weights & set(node.input) for node in graph.node)


def test_static_int8_needs_calibration_and_a_known_mode(exported, tmp_path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(exported, tmp_path / "int8.onnx", "static")
    with pytest.raises(ValueError, match="static"):
        quantize_onnx(exported, tmp_path / "int8.onnx", "int4")  # type: ignore[arg-type]
    assert not (tmp_path / "int8.onnx").exists()


def test_calibration_windows_tile_the_images_in_order(tmp_path) -> None:
    manifest = write_dataset(tmp_path, "src", "train", ["a", "b"], seed=0, height=SIZE, width=2 * SIZE + 10)
    transform = EvalTransformConfig()
    batches = calibration_windows([manifest], transform, (SIZE, SIZE), count=5, batch_size=2)
    assert [tuple(b.shape) for b in batches] == [(2, 3, SIZE, SIZE), (2, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]
    first = SegmentationDataset(manifest, EvalTransform(transform))[0]["image"]
    torch.testing.assert_close(batches[0][0], first[:, :SIZE, :SIZE])
    torch.testing.assert_close(batches[0][1], first[:, :SIZE, SIZE : 2 * SIZE])


def test_int8_copy_is_written_beside_its_source_and_reports_its_agreement(
    exported, model, tmp_path  # noqa: F811
) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(Path(exported).read_bytes())
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    copy = int8_copy(model, source, "dynamic", None, images)
    assert copy.path == tmp_path / "model.int8.onnx" and _int8_initialisers(copy.path) > 0
    assert copy.size_mb == pytest.approx(copy.path.stat().st_size / 2**20)
    expected = (OnnxPredictor(copy.path)(images).argmax(1) == model(images).argmax(1)).float().mean().item()
    assert copy.argmax_agreement == pytest.approx(expected)


def test_the_pipeline_offers_the_int8_modes_the_quantizer_knows() -> None:
    assert typing.get_args(Int8Mode) == QUANT_MODES
