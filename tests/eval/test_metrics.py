from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recyclelora.eval.metrics import ConfusionMatrix, SegMetrics, confusion_matrix

NAMES = ("a", "b", "c", "d")


def test_confusion_matrix_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (3, 17, 11), generator=gen)
    target = torch.randint(0, 5, (3, 17, 11), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    expected = np.zeros((5, 5), dtype=np.int64)
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        if t != 255:
            expected[t, p] += 1
    matrix = confusion_matrix(pred, target, 5)
    assert matrix.dtype == torch.int64
    np.testing.assert_array_equal(matrix.numpy(), expected)


def test_perfect_prediction() -> None:
    target = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    m = SegMetrics.from_confusion(confusion_matrix(target, target, 4), NAMES)
    np.testing.assert_array_equal(m.iou, np.ones(4))
    assert m.miou == 1.0 and m.aacc == 1.0 and m.macc == 1.0


def test_class_absent_everywhere_is_nan_and_left_out() -> None:
    # class 3 is neither predicted nor labelled; class 0: TP 2, FN 1; class 1: TP 1, FP 1; class 2: TP 1
    target = torch.tensor([0, 0, 0, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 2])
    m = SegMetrics.from_confusion(confusion_matrix(pred, target, 4), NAMES)
    assert math.isnan(m.iou[3]) and math.isnan(m.acc[3])
    np.testing.assert_allclose(m.iou[:3], [2 / 3, 1 / 2, 1.0])
    assert m.miou == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    np.testing.assert_allclose(m.acc[:3], [2 / 3, 1.0, 1.0])
    assert m.aacc == pytest.approx(4 / 5)
    np.testing.assert_array_equal(m.tp, [2, 1, 1, 0])
    np.testing.assert_array_equal(m.fp, [0, 1, 0, 0])
    np.testing.assert_array_equal(m.fn, [1, 0, 0, 0])


def test_class_in_ground_truth_never_predicted_has_iou_zero() -> None:
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 0, 0])
    m = SegMetrics.from_confusion(confusion_matrix(pred, target, 2), NAMES[:2])
    assert m.iou[1] == 0.0 and m.acc[1] == 0.0
    assert m.iou[0] == pytest.approx(0.5)
    assert m.miou == pytest.approx(0.25)


def test_ignore_pixels_do_not_count() -> None:
    target = torch.tensor([0, 1, 255, 255])
    pred = torch.tensor([0, 1, 1, 0])
    matrix = confusion_matrix(pred, target, 2)
    assert int(matrix.sum()) == 2
    assert SegMetrics.from_confusion(matrix, NAMES[:2]).miou == 1.0


def test_out_of_range_values_raise() -> None:
    target = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix(torch.tensor([0, 1, 4, 0]), target, 4)
    with pytest.raises(ValueError, match="prediction values"):
        confusion_matrix(torch.tensor([0, -1, 0, 0]), target, 4)
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(target, torch.tensor([0, 7, 0, 0]), 4)
    with pytest.raises(ValueError, match="integer class ids"):
        confusion_matrix(torch.zeros(4), target, 4)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), target, 4)


def test_accumulator_update_and_merge_equal_one_matrix() -> None:
    gen = torch.Generator().manual_seed(1)
    preds = [torch.randint(0, 4, (6, 6), generator=gen) for _ in range(4)]
    targets = [torch.randint(0, 4, (6, 6), generator=gen) for _ in range(4)]
    first, second = ConfusionMatrix(4), ConfusionMatrix(4)
    for i, (p, t) in enumerate(zip(preds, targets)):
        (first if i % 2 else second).update(p, t)
    first.merge(second)
    first.all_reduce()  # not distributed: a no-op
    np.testing.assert_array_equal(first.matrix, confusion_matrix(torch.stack(preds), torch.stack(targets), 4))
    assert first.compute(NAMES).miou == SegMetrics.from_confusion(first.matrix, NAMES).miou
    with pytest.raises(ValueError, match="cannot merge"):
        first.merge(ConfusionMatrix(3))


def test_empty_matrix_and_name_mismatch_raise() -> None:
    with pytest.raises(ValueError, match="no pixel"):
        SegMetrics.from_confusion(torch.zeros(4, 4, dtype=torch.long), NAMES)
    with pytest.raises(ValueError, match="class names"):
        SegMetrics.from_confusion(torch.eye(3, dtype=torch.long), NAMES)
