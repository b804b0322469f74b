from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.transform_config import EvalTransformConfig
from recyclelora.data.transforms import EvalTransform
from recyclelora.eval.evaluate import evaluate
from recyclelora.eval.reports import IMAGE_TABLE_SCHEMA, write_reports
from recyclelora.eval.sliding import SlidingWindowConfig
from tests.eval.test_evaluate import CLASSES, known_sets, one_hot_predict


def random_sets(seed: int = 0) -> dict[str, list[dict]]:
    """Two datasets of random images of varying size, labels with ~20 % ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    sets = {}
    for dataset, count in (("P", 5), ("Q", 3)):
        sets[dataset] = []
        for i in range(count):
            h, w = 5 + i, 7 + 2 * i
            label = torch.randint(0, 3, (h, w), generator=gen)
            label[torch.rand(h, w, generator=gen) < 0.2] = 255
            image = torch.randn(3, h, w, generator=gen)
            sets[dataset].append({"image": image, "label": label, "name": f"dir/im{i}", "dataset": dataset})
    return sets


def mixing_predict(images: torch.Tensor) -> torch.Tensor:
    weight = torch.tensor([[1.0, -0.5, 0.2], [0.3, 1.0, -0.7], [-0.4, 0.1, 1.0]])
    return torch.einsum("kc,bchw->bkhw", weight, images)


def test_per_image_counts_by_hand() -> None:
    result = evaluate(one_hot_predict, known_sets(), classes=CLASSES, progress=False)
    assert result.image_names == {"A": ("img1", "city/img2"), "B": ("b1",)}
    assert result.image_counts["A"].dtype == np.int64
    # img1: x TP 1 FN 1 (an x predicted as y), y TP 2 FP 1, z TP 1, one pixel ignored; img2: 6 x right
    np.testing.assert_array_equal(result.image_counts["A"], [[[1, 0, 1], [2, 1, 0], [1, 0, 0]],
                                                             [[6, 0, 0], [0, 0, 0], [0, 0, 0]]])  # fmt: skip
    np.testing.assert_array_equal(result.image_counts["B"], [[[0, 1, 0], [3, 0, 1], [0, 0, 0]]])


@pytest.mark.parametrize("sliding", [None, SlidingWindowConfig(crop=(4, 4), stride=(3, 3), batch_size=2)])
def test_per_image_counts_sum_to_the_dataset_counts(sliding) -> None:
    result = evaluate(mixing_predict, random_sets(), sliding=sliding, classes=CLASSES, progress=False)
    for dataset, m in result.metrics.items():
        counts = result.image_counts[dataset]
        assert counts.shape == (result.num_images[dataset], len(CLASSES), 3)
        np.testing.assert_array_equal(counts.sum(0), np.stack([m.tp, m.fp, m.fn], axis=-1))


def test_per_image_table_matches_the_class_table(tmp_path: Path) -> None:
    result = evaluate(mixing_predict, random_sets(), classes=CLASSES, progress=False)
    paths = write_reports(result, tmp_path)
    assert paths["per_image"] == tmp_path / "per_image.parquet"
    table = pq.read_table(paths["per_image"])
    assert table.schema.equals(IMAGE_TABLE_SCHEMA)
    rows = table.to_pylist()
    expected_keys = [
        (dataset, f"dir/im{i}", c) for dataset, n in (("P", 5), ("Q", 3)) for i in range(n) for c in range(3)
    ]
    assert [(r["dataset"], r["image"], r["class_id"]) for r in rows] == expected_keys
    summed = table.group_by(["dataset", "class_id"]).aggregate([(k, "sum") for k in ("tp", "fp", "fn")])
    by_key = {
        (r["dataset"], r["class_id"]): (r["tp_sum"], r["fp_sum"], r["fn_sum"]) for r in summed.to_pylist()
    }
    per_class = pq.read_table(paths["per_class"]).to_pylist()
    assert by_key == {(r["dataset"], r["class_id"]): (r["tp"], r["fp"], r["fn"]) for r in per_class}
    assert not list(tmp_path.rglob("*.tmp"))


def test_per_image_rows_are_stable_across_runs(tmp_path: Path) -> None:
    tables = []
    for run in ("first", "second"):
        result = evaluate(mixing_predict, random_sets(), classes=CLASSES, progress=False)
        tables.append(pq.read_table(write_reports(result, tmp_path / run)["per_image"]))
    assert tables[0].equals(tables[1])
    assert (tmp_path / "first/metrics.json").read_bytes() == (tmp_path / "second/metrics.json").read_bytes()


def test_image_column_holds_the_datasets_sample_names(tiny_benchmark: dict[str, dict[str, Path]]) -> None:
    manifest = tiny_benchmark["synth_night"]["val"]
    dataset = SegmentationDataset(manifest, EvalTransform(EvalTransformConfig()))
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(19, 3, generator=gen)
    result = evaluate(
        lambda x: torch.einsum("kc,bchw->bkhw", weight, x), {"night": dataset}, sliding=None, progress=False
    )
    assert result.image_names["night"] == tuple(kept.sample.image.stem for kept in dataset.kept)
    m = result.metrics["night"]
    np.testing.assert_array_equal(result.image_counts["night"].sum(0), np.stack([m.tp, m.fp, m.fn], axis=-1))
