from __future__ import annotations

import numpy as np
import onnx
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from recyclelora.eval.evaluate import evaluate
from recyclelora.eval.predictors import OnnxPredictor, TorchPredictor
from recyclelora.eval.sliding import SlidingWindowConfig
from recyclelora.export import OnnxParityError, export_onnx, verify_onnx

#: ONNX export and onnxruntime sessions: seconds each, so the module runs outside the fast lane.
pytestmark = pytest.mark.slow
SIZE = 56


class TinySegmentor(nn.Module):
    """A 2-block DINOv2-layout ViT, a 1x1 conv classifier and bilinear upsampling to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            "vit_small_patch14_dinov2",
            pretrained=False,
            img_size=SIZE,
            embed_dim=32,
            depth=2,
            num_heads=2,
            dynamic_img_size=True,
        )
        self.classifier = nn.Conv2d(32, 19, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_intermediates(images, indices=1, intermediates_only=True)[-1]
        return F.interpolate(self.classifier(features), size=images.shape[-2:], mode="bilinear")


@pytest.fixture(scope="module")
def model() -> TinySegmentor:
    torch.manual_seed(0)
    return TinySegmentor().eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, torch.randn(1, 3, SIZE, SIZE))
    return path


def test_export_names_and_dynamic_batch(exported) -> None:
    graph = onnx.load(str(exported)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(exported.parent.glob("*.tmp"))


@pytest.mark.parametrize("batch", [1, 3])
def test_parity_with_dynamic_batch(model, exported, batch) -> None:
    inputs = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    parity = verify_onnx(model, exported, inputs)
    assert parity.max_rel_diff <= 1e-3 and parity.argmax_agreement >= 0.999
    assert parity.logit_scale > 0 and parity.max_abs_diff == pytest.approx(
        parity.max_rel_diff * parity.logit_scale
    )


def test_parity_failure_is_reported(model, exported) -> None:
    changed = TinySegmentor()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.classifier.bias[3] += 10.0
    with pytest.raises(OnnxParityError, match="does not reproduce"):
        verify_onnx(changed, exported, torch.randn(2, 3, SIZE, SIZE))


def test_onnxruntime_predictor_equals_torch_predictor(model, exported) -> None:
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        OnnxPredictor(exported)(images), TorchPredictor(model)(images), rtol=1e-4, atol=1e-4
    )

    gen = torch.Generator().manual_seed(6)
    samples = [
        {
            "image": torch.randn(3, 70, 90, generator=gen),
            "label": torch.randint(0, 19, (70, 90), generator=gen),
            "name": f"s{i}",
            "dataset": "toy",
        }
        for i in range(2)
    ]
    config = SlidingWindowConfig(crop=(SIZE, SIZE), stride=(37, 37), batch_size=4)
    confusions = {
        name: evaluate(predict, {"toy": samples}, sliding=config, progress=False).metrics["toy"].confusion
        for name, predict in (("torch", TorchPredictor(model)), ("onnx", OnnxPredictor(exported)))
    }
    moved = np.abs(confusions["torch"] - confusions["onnx"]).sum() // 2  # pixels whose argmax differs
    assert confusions["torch"].sum() == 2 * 70 * 90 and moved <= 0.001 * 2 * 70 * 90


def test_onnx_predictor_errors(model, exported, tmp_path) -> None:
    with pytest.raises(ValueError, match="sliding windows of the exported size"):
        OnnxPredictor(exported)(torch.randn(1, 3, SIZE + 14, SIZE))
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxPredictor(tmp_path / "missing.onnx")
    static = export_onnx(model, tmp_path / "static.onnx", torch.randn(2, 3, SIZE, SIZE), dynamic_batch=False)
    with pytest.raises(ValueError, match=r"axis 0"):
        OnnxPredictor(static)(torch.randn(3, 3, SIZE, SIZE))


class BatchOfTwo(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(2, 3, *images.shape[2:]).repeat(1, 7, 1, 1)[:, :19]


def test_export_refuses_what_it_cannot_export_faithfully(model, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        export_onnx(model, tmp_path / "bad.onnx", torch.randn(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="fixed the batch dimension"):
        export_onnx(BatchOfTwo(), tmp_path / "bad.onnx", torch.randn(2, 3, 8, 8))
    assert not list(tmp_path.iterdir())


def test_torch_predictor_eval_mode_autocast_and_float32_output(model) -> None:
    dropout = nn.Sequential(model, nn.Dropout(p=0.5)).train()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    predictor = TorchPredictor(dropout)
    assert not dropout.training
    torch.testing.assert_close(predictor(images), predictor(images))

    half = TorchPredictor(model, device="cpu", amp_dtype=torch.bfloat16)(images)
    full = TorchPredictor(model)(images)
    assert half.dtype == torch.float32 and not torch.equal(half, full)
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05 * float(full.abs().max()))
    with pytest.raises(ValueError, match="amp_dtype"):
        TorchPredictor(model, amp_dtype=torch.float64)
