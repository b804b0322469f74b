from __future__ import annotations

import time

import numpy as np
import pytest

from recyclelora.eval.bootstrap import BootstrapInterval, paired_bootstrap, paired_bootstrap_mean


def synthetic(images: int, seeds: int = 3, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Counts of two methods of similar quality on the same images; class 4 absent in seed 0 of both."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1000, (seeds, images, classes, 3))
    b = rng.integers(0, 1000, (seeds, images, classes, 3))
    a[0, :, 4] = b[0, :, 4] = 0
    return a, b


def loop_miou(counts: np.ndarray) -> float:
    """Mean over seeds of the mIoU of the counts summed over images, with plain loops."""
    per_seed = []
    for seed_counts in counts:
        ious = []
        for c in range(seed_counts.shape[1]):
            tp, fp, fn = (int(sum(image[c, k] for image in seed_counts)) for k in range(3))
            if tp + fp + fn > 0:
                ious.append(tp / (tp + fp + fn))
        per_seed.append(sum(ious) / len(ious))
    return sum(per_seed) / len(per_seed)


def test_identical_methods_differ_by_zero() -> None:
    a, _ = synthetic(30)
    result = paired_bootstrap(a, a.copy(), n_resamples=200)
    assert result == BootstrapInterval(0.0, 0.0, 0.0, 200, 0.95)


def test_observed_difference_matches_plain_loops() -> None:
    a, b = synthetic(12)
    result = paired_bootstrap(a, b, n_resamples=50)
    assert result.difference == pytest.approx(loop_miou(a) - loop_miou(b), abs=1e-12)


def test_interval_contains_the_difference_and_narrows_with_more_images() -> None:
    widths = []
    for images in (20, 400):
        result = paired_bootstrap(*synthetic(images), seed=1)
        assert result.low <= result.difference <= result.high
        widths.append(result.high - result.low)
    assert widths[1] < widths[0] / 2


def test_a_method_better_on_every_image_has_an_interval_above_zero() -> None:
    b, _ = synthetic(40)
    a = b.copy()
    a[..., 0] += 50  # 50 pixels per image and class moved from FN to TP: same union, more TP
    b[..., 2] += 50
    result = paired_bootstrap(a, b)
    assert 0 < result.low <= result.difference <= result.high


def test_same_seed_same_interval() -> None:
    a, b = synthetic(25)
    first, second = paired_bootstrap(a, b, seed=7), paired_bootstrap(a, b, seed=np.random.default_rng(7))
    assert first == second
    assert paired_bootstrap(a, b, seed=8) != first


def test_speed_of_a_full_size_comparison() -> None:
    a, b = synthetic(500, classes=19)
    start = time.perf_counter()
    paired_bootstrap(a, b)
    assert time.perf_counter() - start < 5.0  # about 0.15 s on 2 CPU cores


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        (np.zeros((3, 4, 5, 3)), np.zeros((3, 5, 5, 3)), {}, "pair them on the same seeds and images"),
        (np.zeros((4, 5, 3)), np.zeros((4, 5, 3)), {}, r"\(seeds, images, classes, 3\)"),
        (np.zeros((3, 4, 5, 2)), np.zeros((3, 4, 5, 2)), {}, r"\(seeds, images, classes, 3\)"),
        (np.zeros((3, 0, 5, 3)), np.zeros((3, 0, 5, 3)), {}, "no empty axis"),
        (np.full((1, 2, 2, 3), -1), np.ones((1, 2, 2, 3)), {}, "non-negative"),
        (np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3)), {"n_resamples": 0}, "n_resamples"),
        (np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3)), {"confidence": 1.0}, "confidence"),
    ],
)
def test_invalid_inputs(a, b, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, **kwargs)


def test_mean_over_targets_pairs_each_target_and_shares_the_seeds() -> None:
    fog, tex = synthetic(12, seed=1), synthetic(20, classes=6, seed=2)  # other images and classes per target
    result = paired_bootstrap_mean([fog, tex], n_resamples=300)
    expected = ((loop_miou(fog[0]) - loop_miou(fog[1])) + (loop_miou(tex[0]) - loop_miou(tex[1]))) / 2
    assert result.difference == pytest.approx(expected, abs=1e-12)
    assert result.low <= result.difference <= result.high
    one_target = paired_bootstrap_mean([fog], n_resamples=300, seed=3)
    assert one_target == paired_bootstrap(*fog, n_resamples=300, seed=3)
    better = []
    for a, _ in (fog, tex):  # up to 50 FN pixels of every image and class become TP
        moved = np.minimum(a[..., 2], 50)
        better.append((a + np.stack([moved, 0 * moved, -moved], -1), a))
    assert paired_bootstrap_mean(better, n_resamples=300).low > 0
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap_mean([fog, synthetic(12, seeds=2)])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_mean([])
