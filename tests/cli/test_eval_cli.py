from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.manifest import write_manifest
from recyclelora.data.transforms import EvalTransform
from recyclelora.eval.evaluate import evaluate
from recyclelora.eval.predict import InferenceConfig, InferencePredictor
from recyclelora.eval.predictors import TorchPredictor
from recyclelora.eval.reports import metrics_dict
from recyclelora.eval.sliding import SlidingWindowConfig
from recyclelora.models import Segmentor
from tests.cli import SIZE, assert_user_error, invoke, save_tiny_checkpoint, single_thread, write_dataset

runner = CliRunner()
WINDOW = ("--crop", str(SIZE), "--stride", "37")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    save_tiny_checkpoint(root / "model.safetensors", seed=5)
    write_dataset(root, "alpha", "val", ["a0", "a1"], seed=0)
    write_dataset(root, "alpha", "train", ["a2"], seed=1)
    write_dataset(root, "beta", "val", ["b0", "b1"], seed=2)
    return root


def data_args(work: Path) -> list[str | Path]:
    """alpha's val and train manifests around beta's: they must still be scored as one dataset."""
    return [
        "--data",
        work / "alpha_val.parquet",
        "--data",
        work / "beta_val.parquet",
        "--data",
        work / "alpha_train.parquet",
    ]


@pytest.fixture(scope="module")
def torch_eval(work) -> Path:
    out = work / "torch_eval"
    result = invoke(
        "eval", "--model", work / "model.safetensors", *data_args(work), *WINDOW, "--device", "cpu",
        "--out", out / "reports", "--save-predictions", out / "preds", "--overlays",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_eval_groups_manifests_by_dataset_and_equals_the_library(work, torch_eval) -> None:
    metrics = json.loads((torch_eval / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"alpha", "beta", "mean_mIoU"}
    assert metrics["alpha"]["num_images"] == 3 and metrics["beta"]["num_images"] == 2
    assert metrics["mean_mIoU"] == pytest.approx((metrics["alpha"]["mIoU"] + metrics["beta"]["mIoU"]) / 2)
    model = Segmentor.from_checkpoint(work / "model.safetensors")
    datasets = {
        "alpha": SegmentationDataset(
            [work / "alpha_val.parquet", work / "alpha_train.parquet"], EvalTransform()
        ),
        "beta": SegmentationDataset(work / "beta_val.parquet", EvalTransform()),
    }
    sliding = SlidingWindowConfig(crop=(SIZE, SIZE), stride=(37, 37))
    direct = evaluate(TorchPredictor(model), datasets, sliding=sliding, progress=False)
    assert metrics == json.loads(json.dumps(metrics_dict(direct)))
    for name in ("per_class.parquet", "confusion/alpha.csv", "confusion/beta.csv", "class_iou.png"):
        assert (torch_eval / "reports" / name).is_file()


def test_saved_predictions_are_named_after_the_images(torch_eval) -> None:
    preds = torch_eval / "preds"
    assert sorted(p.name for p in (preds / "alpha").iterdir()) == ["a0.png", "a1.png", "a2.png"]
    assert sorted(p.name for p in (preds / "beta").iterdir()) == ["b0.png", "b1.png"]
    assert sorted(p.name for p in (preds / "beta_overlay").iterdir()) == ["b0.png", "b1.png"]
    assert np.asarray(Image.open(preds / "beta" / "b0.png")).shape == (SIZE, 84)


@pytest.mark.slow
def test_eval_with_onnxruntime_equals_torch(work, torch_eval) -> None:
    onnx_model = work / "model.onnx"
    export = ("export", "onnx", "--checkpoint", work / "model.safetensors", "--out", onnx_model)
    assert invoke(*export, "--height", SIZE, "--width", SIZE).exit_code == 0
    out = work / "onnx_eval"
    result = invoke(
        "eval", "--model", onnx_model, "--backend", "onnxruntime", *data_args(work), *WINDOW, "--out", out
    )
    assert result.exit_code == 0, result.output
    torch_metrics = json.loads((torch_eval / "reports" / "metrics.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) == torch_metrics
    mismatch = invoke(
        "eval", "--model", onnx_model, "--backend", "onnxruntime", *data_args(work), "--crop", "70"
    )
    assert_user_error(mismatch, "exported for 56x56", "pass --crop 56")


def test_predict_writes_trainids_with_the_images_stems(work, torch_eval, tmp_path) -> None:
    images = [work / "alpha" / "val" / "a0.png", work / "beta" / "val" / "b1.png"]
    result = invoke(
        "predict", *images, "--model", work / "model.safetensors", *WINDOW, "--out", tmp_path, "--overlays"
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["a0.png", "b1.png"]
    assert sorted(p.name for p in (tmp_path / "pred_overlay").iterdir()) == ["a0.png", "b1.png"]
    for folder, stem in (("alpha", "a0"), ("beta", "b1")):  # the same pipeline as eval's saved predictions
        predicted = np.asarray(Image.open(tmp_path / "pred" / f"{stem}.png"))
        np.testing.assert_array_equal(
            predicted, np.asarray(Image.open(torch_eval / "preds" / folder / f"{stem}.png"))
        )


def test_predict_takes_the_images_inside_a_folder(work, torch_eval, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(work / "alpha" / "val" / "a0.png", folder / "a0.png")
    shutil.copy(work / "alpha" / "val" / "a1.png", folder / "a1.PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    result = invoke("predict", folder, "--model", work / "model.safetensors", *WINDOW, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "pred").iterdir()) == ["a0.png", "a1.png"]
    for stem in ("a0", "a1"):
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "out" / "pred" / f"{stem}.png")),
            np.asarray(Image.open(torch_eval / "preds" / "alpha" / f"{stem}.png")),
        )
    result = invoke("predict", folder / "nested", "--model", work / "model.safetensors", "--out", tmp_path)
    assert_user_error(result, "nested holds no image")


def test_predict_names_a_corrupt_image(work, tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = work / "alpha" / "val" / "a0.png"
    result = invoke("predict", good, broken, "--model", work / "model.safetensors", "--out", tmp_path / "out")
    assert_user_error(result, "broken.png", "corrupt")


def test_inference_at_another_size_scores_at_the_image_size(work) -> None:
    model = Segmentor.from_checkpoint(work / "model.safetensors")
    image = torch.randn(1, 3, SIZE, 84, generator=torch.Generator().manual_seed(0))
    sliding = SlidingWindowConfig(crop=(SIZE, SIZE), stride=(37, 37))
    predict = TorchPredictor(model)
    same = InferencePredictor(predict, InferenceConfig(sliding=sliding, short_edge=SIZE))(image)
    torch.testing.assert_close(same, InferencePredictor(predict, InferenceConfig(sliding=sliding))(image))
    larger = InferencePredictor(predict, InferenceConfig(sliding=sliding, size=(168, 112)))(image)
    assert larger.shape == (1, 19, SIZE, 84) and not torch.allclose(larger, same)
    with pytest.raises(ValueError, match="exclusive"):
        InferenceConfig(size=(10, 10), short_edge=10)


def test_eval_with_resize_keeps_the_label_size(work, tmp_path) -> None:
    result = invoke(
        "eval", "--model", work / "model.safetensors", "--data", work / "beta_val.parquet", *WINDOW,
        "--resize", "112x84", "--save-predictions", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "beta" / "b0.png")).shape == (SIZE, 84)
    bad = invoke("eval", "--model", work / "model.safetensors", *data_args(work), "--resize", "big")
    assert bad.exit_code == 2 and "is not WIDTHxHEIGHT" in bad.output


def test_eval_fit_scores_at_the_largest_size_inside_the_box(work, tmp_path) -> None:
    def reports(*size: str) -> dict:
        out = tmp_path / "_".join(size)
        result = invoke(
            "eval", "--model", work / "model.safetensors", "--data", work / "beta_val.parquet", *WINDOW,
            *size, "--out", out,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads((out / "metrics.json").read_text())

    # the 84 x 56 images fit into 336 x 112 at twice their size (the short edge binds): 168 x 112
    fitted = reports("--fit", "336x112")
    assert fitted == reports("--resize", "168x112") and fitted != reports()
    both = invoke(
        "eval", "--model", work / "model.safetensors", *data_args(work), "--fit", "9x9", "--short-edge", "9"
    )
    assert both.exit_code == 1 and "exclusive" in both.output


def test_clear_errors(work, tmp_path) -> None:
    model = work / "model.safetensors"
    beta = ("--data", work / "beta_val.parquet")
    assert_user_error(invoke("eval", "--model", tmp_path / "missing.safetensors", *beta), "does not exist")
    five = save_tiny_checkpoint(tmp_path / "five.safetensors", num_classes=5)
    assert_user_error(invoke("eval", "--model", five, *beta, *WINDOW), "are not among the model's 5 training classes")
    empty = write_manifest(tmp_path / "empty_val.parquet", [])
    assert_user_error(invoke("eval", "--model", model, "--data", empty), "has no samples")
    assert_user_error(invoke("eval", "--model", model, "--data", tmp_path / "nope.parquet"), "does not exist")
    assert_user_error(
        invoke("eval", "--model", model, *beta, "--backend", "onnxruntime"), "needs an .onnx model"
    )
    assert_user_error(
        invoke("eval", "--model", model, *beta, "--crop", "20", "--stride", "30"), "exceeds crop"
    )
