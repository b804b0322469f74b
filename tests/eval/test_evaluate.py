from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from rich.console import Console

from recyclelora.data.classes import PALETTE, ClassSet
from recyclelora.eval.evaluate import evaluate
from recyclelora.eval.reports import metrics_table, write_reports
from recyclelora.eval.sliding import SlidingWindowConfig

NAMES = ("x", "y", "z")
CLASSES = ClassSet.of(NAMES, PALETTE[:3].tolist())
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def one_hot_predict(images: torch.Tensor) -> torch.Tensor:
    """A fake model whose prediction map is written in channel 0 of the image."""
    return torch.nn.functional.one_hot(images[:, 0].round().long(), 3).permute(0, 3, 1, 2).float()


def sample(pred: list[list[int]], label: list[list[int]], name: str, dataset: str) -> dict:
    pred_t = torch.tensor(pred, dtype=torch.float32)
    image = torch.stack([pred_t, torch.zeros_like(pred_t), torch.full_like(pred_t, 2.0)])
    return {"image": image, "label": torch.tensor(label), "name": name, "dataset": dataset}


def known_sets() -> dict[str, list[dict]]:
    return {
        "A": [
            sample([[0, 1, 1], [1, 2, 0]], [[0, 0, 1], [1, 2, 255]], "img1", "A"),
            sample([[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], "city/img2", "A"),
        ],
        "B": [sample([[1, 1], [0, 1]], [[1, 1], [1, 1]], "b1", "B")],
    }


# Hand count. A: class x TP 7 FN 1; y TP 2 FP 1; z TP 1; 10 of 11 labelled pixels right.
# B: y TP 3 FN 1; x FP 1 (IoU 0); z absent from prediction and label (NaN, left out).
A_IOU = [7 / 8, 2 / 3, 1.0]
B_IOU = [0.0, 3 / 4, math.nan]


@pytest.mark.parametrize("sliding", [None, SlidingWindowConfig(crop=(2, 2), stride=(1, 1), batch_size=3)])
def test_metrics_on_known_predictions(sliding) -> None:
    result = evaluate(one_hot_predict, known_sets(), sliding=sliding, classes=CLASSES, progress=False)
    a, b = result.metrics["A"], result.metrics["B"]
    np.testing.assert_allclose(a.iou, A_IOU)
    np.testing.assert_allclose(b.iou, B_IOU)
    assert a.miou == pytest.approx(np.mean(A_IOU)) and a.aacc == pytest.approx(10 / 11)
    assert b.miou == pytest.approx(3 / 8) and b.aacc == pytest.approx(3 / 4)
    assert result.mean_miou == pytest.approx((np.mean(A_IOU) + 3 / 8) / 2)
    assert result.num_images == {"A": 2, "B": 1}


def test_saved_predictions_and_overlays(tmp_path) -> None:
    sets = known_sets()
    evaluate(
        one_hot_predict,
        sets,
        classes=CLASSES,
        save_predictions=tmp_path,
        overlays=True,
        progress=True,
        **IDENTITY,
    )
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert written == [
        "A/city/img2.png",
        "A/img1.png",
        "A_overlay/city/img2.png",
        "A_overlay/img1.png",
        "B/b1.png",
        "B_overlay/b1.png",
    ]
    assert not list(tmp_path.rglob("*.tmp"))
    for dataset, samples in sets.items():
        for s in samples:
            pred = np.asarray(Image.open(tmp_path / dataset / f"{s['name']}.png"))
            assert pred.dtype == np.uint8
            np.testing.assert_array_equal(pred, s["image"][0].numpy().astype(np.uint8))
            blended = np.asarray(Image.open(tmp_path / f"{dataset}_overlay" / f"{s['name']}.png"))
            assert blended.shape == (*pred.shape, 3)
            # the de-normalised image is (pred, 0, 2) per pixel; the overlay is its average with the colour
            np.testing.assert_array_equal(blended[..., 1], np.round(PALETTE[pred][..., 1] / 2))
            np.testing.assert_array_equal(
                blended[..., 2], np.round((2 + PALETTE[pred][..., 2].astype(float)) / 2)
            )


def test_an_image_scored_at_a_test_size_is_compared_at_the_label_size(tmp_path) -> None:
    # a 2 x 2 image predicting x | y, a 2 x 4 label x x | y y: scores upsampled to 2 x 4 agree everywhere
    small = sample([[0, 1], [0, 1]], [[0, 0, 1, 1], [0, 0, 1, 1]], "s", "S")
    result = evaluate(
        one_hot_predict, {"S": [small]}, sliding=None, classes=CLASSES, save_predictions=tmp_path,
        overlays=True, progress=False, **IDENTITY,
    )  # fmt: skip
    assert result.metrics["S"].aacc == 1.0 and result.metrics["S"].confusion.sum() == 8
    saved = np.asarray(Image.open(tmp_path / "S" / "s.png"))
    np.testing.assert_array_equal(saved, [[0, 0, 1, 1], [0, 0, 1, 1]])
    assert np.asarray(Image.open(tmp_path / "S_overlay" / "s.png")).shape == (2, 4, 3)


def test_unsized_iterables_are_accepted() -> None:
    sets = {name: (s for s in samples) for name, samples in known_sets().items()}
    result = evaluate(one_hot_predict, sets, sliding=None, classes=CLASSES, progress=True)
    np.testing.assert_allclose(result.metrics["A"].iou, A_IOU)


def test_errors() -> None:
    sets = known_sets()
    with pytest.raises(ValueError, match="'B' yielded no samples"):
        evaluate(one_hot_predict, {"A": sets["A"], "B": []}, classes=CLASSES, progress=False)
    with pytest.raises(ValueError, match="no dataset"):
        evaluate(one_hot_predict, {}, classes=CLASSES, progress=False)
    with pytest.raises(ValueError, match="3 class scores per pixel but num_classes=19"):
        evaluate(one_hot_predict, sets, progress=False)
    with pytest.raises(ValueError, match=r"label must be an \(H, W\) map"):
        bad = dict(sets["B"][0], label=torch.zeros(1, 2, 2, dtype=torch.long))
        evaluate(one_hot_predict, {"B": [bad]}, classes=CLASSES, progress=False)
    with pytest.raises(ValueError, match="needs save_predictions"):
        evaluate(one_hot_predict, sets, classes=CLASSES, overlays=True, progress=False)


@pytest.mark.parametrize("name", ["../escape", "/abs", ""])
def test_unsafe_names_are_refused(tmp_path, name) -> None:
    s = dict(known_sets()["B"][0], name=name)
    with pytest.raises(ValueError, match="relative path"):
        evaluate(one_hot_predict, {"B": [s]}, classes=CLASSES, save_predictions=tmp_path, progress=False)


def test_duplicate_names_are_refused(tmp_path) -> None:
    s = known_sets()["B"][0]
    with pytest.raises(ValueError, match="two samples are named 'b1'"):
        evaluate(one_hot_predict, {"B": [s, s]}, classes=CLASSES, save_predictions=tmp_path, progress=False)


def test_reports_are_written_and_parseable(tmp_path) -> None:
    result = evaluate(one_hot_predict, known_sets(), classes=CLASSES, progress=False)
    paths = write_reports(result, tmp_path)

    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["B"]["IoU"] == {"x": 0.0, "y": 0.75, "z": None}
    assert metrics["A"]["mIoU"] == pytest.approx(result.metrics["A"].miou)
    assert metrics["A"]["aAcc"] == pytest.approx(10 / 11)
    assert metrics["mean_mIoU"] == pytest.approx(result.mean_miou)

    rows = pq.read_table(paths["per_class"]).to_pylist()
    assert len(rows) == 6
    b_rows = {r["class_name"]: r for r in rows if r["dataset"] == "B"}
    assert b_rows["z"]["iou"] is None and b_rows["z"]["acc"] is None
    assert (b_rows["y"]["tp"], b_rows["y"]["fp"], b_rows["y"]["fn"]) == (3, 0, 1)
    assert (b_rows["x"]["class_id"], b_rows["x"]["iou"], b_rows["x"]["fp"]) == (0, 0.0, 1)

    for path in paths["confusion"]:
        with open(path, newline="") as handle:
            header, *body = list(csv.reader(handle))
        assert header[1:] == list(NAMES) and [r[0] for r in body] == list(NAMES)
        matrix = np.array([[int(v) for v in r[1:]] for r in body])
        np.testing.assert_array_equal(matrix, result.metrics[path.stem].confusion)

    with Image.open(paths["plot"]) as plot:
        assert plot.format == "PNG" and plot.width > 100
    assert not list(tmp_path.rglob("*.tmp"))


def test_rich_table_lists_classes_and_datasets() -> None:
    result = evaluate(one_hot_predict, known_sets(), classes=CLASSES, progress=False)
    console = Console(file=io.StringIO(), width=120)
    console.print(metrics_table(result))
    text = console.file.getvalue()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert set(NAMES) | {"mIoU", "aAcc"} <= set(lines)
    assert "87.50" in lines["x"] and "-" in lines["z"].split("│")[3]  # A: 7/8; B: z is NaN
    assert f"{100 * result.mean_miou:.2f}" in text
