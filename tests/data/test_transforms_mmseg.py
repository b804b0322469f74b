"""The training transform step by step against mmseg 1.x / mmcv 2.x's pipeline, on hand-computable arrays.

Expected values are derived in the comments (OpenCV's 8-bit HSV: V = max, S = 255 (V - min) / V, H in
degrees / 2; back: min = V (1 - S / 255)); a scripted generator fixes every random draw.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from recyclelora.data.transform_config import EvalTransformConfig, TrainTransformConfig
from recyclelora.data.transforms import (
    EvalTransform,
    TrainTransform,
    convert,
    resize_pair,
    scale_saturation,
    shift_hue,
)

MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])
PAD = -MEAN / STD  # a 0 pixel after normalisation


class ScriptedRng:
    """Stands in for ``np.random.Generator``: returns scripted values in call order, checking each against
    the range the call asked for, and fails on a draw beyond the script."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls: list[tuple] = []

    def _next(self, call: tuple) -> float:
        if not self.values:
            raise AssertionError(f"unscripted draw {call} after {self.calls}")
        self.calls.append(call)
        return self.values.pop(0)

    def integers(self, low: int, high: int | None = None) -> int:
        low, high = (0, low) if high is None else (low, high)
        value = self._next(("integers", low, high))
        assert low <= value < high, f"scripted {value} outside integers({low}, {high})"
        return value

    def uniform(self, low: float, high: float) -> float:
        value = self._next(("uniform", low, high))
        assert low <= value <= high, f"scripted {value} outside uniform({low}, {high})"
        return value

    def random(self) -> float:
        return self._next(("random",))


def _config(**overrides) -> TrainTransformConfig:
    """Keeps a small image's size (short edge 2 -> 2), crops 4 x 4, no flip, no photometric, no crop check."""
    base = {"base_size": 2, "scale_ratios": (1.0,), "crop_size": (4, 4), "cat_max_ratio": 1.0}
    return TrainTransformConfig(**{"flip_prob": 0.0, "photometric": False, **base, **overrides})


def _normalised(image: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(image).permute(2, 0, 1).float() - MEAN[:, None, None]) / STD[:, None, None]


# --- resize -----------------------------------------------------------------------------------------------


def test_short_edges_are_the_published_scales() -> None:
    published = [int(512 * x * 0.1) for x in range(5, 21)]  # the config's RandomChoiceResize scales
    assert list(TrainTransform().short_edges) == published
    assert published == [256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024]
    assert TrainTransform(TrainTransformConfig(base_size=168)).short_edges[:3] == (84, 100, 117)  # int(117.6)


def test_resized_size_is_resize_shortest_edge_then_imrescale() -> None:
    transform = TrainTransform()
    # GTAV 1052 x 1914, short edge 512: w = 512 / 1052 * 1914 = 931.5 -> 932; the rescale keeps (512, 932).
    assert transform.resized_size(1052, 1914, 512) == (512, 932)
    # Portrait 80 x 60 -> short edge 25: h = 25 / 60 * 80 = 33.3 -> 33.
    assert transform.resized_size(80, 60, 25) == (33, 25)
    # A panorama: (1024, 4096) exceeds 2048, halved to (512, 2048).
    assert transform.resized_size(600, 2400, 1024) == (512, 2048)


def test_resized_size_when_the_long_edge_cap_bites() -> None:
    transform = TrainTransform(TrainTransformConfig(max_long_edge=40))
    # 5 x 13, short edge 16: (16, 41.6) is capped by 40 / 41.6 to (15.38, 40) -> box (15, 40); imrescale then
    # uses f = min(40 / 13, 15 / 5) = 3, giving (15, 39), one pixel short of the cap a one-step rule gives.
    assert transform.resized_size(5, 13, 16) == (15, 39)
    assert transform.resized_size(13, 5, 16) == (39, 15)


def test_resize_is_opencv_bilinear_without_antialias_and_nearest_for_labels() -> None:
    row = np.array([0, 4, 16, 36, 64, 100, 144, 196], np.uint8)  # 4 x^2, a horizontal gradient
    image = np.repeat(np.repeat(row[None, :, None], 8, 0), 3, 2)
    label = np.tile(np.arange(8, dtype=np.uint8), (8, 1))
    resized, resized_label = resize_pair(image, label, (2, 2))
    # 8 -> 2 bilinear samples x = 4 i + 1.5: the mean of pixels 1, 2 (10) and of 5, 6 (122).
    assert resized[..., 0].tolist() == [[10, 122], [10, 122]]
    assert np.array_equal(resized, cv2.resize(image, (2, 2), interpolation=cv2.INTER_LINEAR))
    # Nearest takes source column floor(4 i).
    assert resized_label.tolist() == [[0, 4], [0, 4]]
    # An antialiased resize averages wider windows: box (area) 14, 126; torch's antialiased bilinear differs.
    area = cv2.resize(image, (2, 2), interpolation=cv2.INTER_AREA)
    assert area[..., 0].tolist() == [[14, 126], [14, 126]]
    smooth = TF.resize(torch.from_numpy(image).permute(2, 0, 1), [2, 2], antialias=True)
    assert not torch.equal(smooth.permute(1, 2, 0), torch.from_numpy(resized))


def test_train_transform_resizes_with_opencv_bilinear() -> None:
    row = np.array([0, 4, 16, 36, 64, 100, 144, 196], np.uint8)
    image = np.repeat(np.repeat(row[None, :, None], 8, 0), 3, 2)
    label = np.zeros((8, 8), np.uint8)
    out, lbl = TrainTransform(_config(crop_size=(2, 2)))(image, label, np.random.default_rng(0))
    expected = np.repeat(np.array([[10, 122], [10, 122]], np.uint8)[..., None], 3, 2)
    torch.testing.assert_close(out, _normalised(expected))
    assert lbl.shape == (2, 2)


# --- crop -------------------------------------------------------------------------------------------------

CROP_LABEL = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [0, 2, 255, 255]], np.uint8)


def test_crop_redraws_until_two_classes_and_none_reaches_the_ratio() -> None:
    transform = TrainTransform(TrainTransformConfig(crop_size=(2, 2), cat_max_ratio=0.75))
    # Rejected: (0, 0) one class; (2, 2) only 255; (2, 0) 2:2:2:0 = 3 of 4 = 0.75, not < 0.75;
    # (1, 2) class 1 and 255 (ignored, not a second class). Accepted: (0, 1), classes 0 and 1 half each.
    rng = ScriptedRng(0, 0, 2, 2, 2, 0, 1, 2, 0, 1)
    assert transform.crop_origin(CROP_LABEL, rng) == (0, 1)
    assert rng.calls == [("integers", 0, 3)] * 10 and not rng.values
    # (1, 1): classes 0, 1, 2 once each and 255, accepted at once.
    assert transform.crop_origin(CROP_LABEL, ScriptedRng(1, 1)) == (1, 1)


def test_crop_keeps_the_eleventh_draw_unchecked() -> None:
    transform = TrainTransform(TrainTransformConfig(crop_size=(2, 2), cat_max_ratio=0.75))
    rng = ScriptedRng(*([0, 0] * 10), 2, 2)  # ten rejected crops, then a last one (all 255) kept as it is
    assert transform.crop_origin(CROP_LABEL, rng) == (2, 2)
    assert not rng.values
    unchecked = TrainTransform(TrainTransformConfig(crop_size=(2, 2), cat_max_ratio=1.0))
    assert unchecked.crop_origin(CROP_LABEL, ScriptedRng(0, 0)) == (0, 0)  # one draw, no check


# --- pad and flip -----------------------------------------------------------------------------------------


def _small_pair() -> tuple[np.ndarray, np.ndarray]:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    return image, np.array([[0, 1, 2], [3, 4, 5]], np.uint8)


def test_pad_before_flip_is_zero_pixels_normalised_bottom_right() -> None:
    image, label = _small_pair()
    out, lbl = TrainTransform(_config())(image, label, np.random.default_rng(0))
    torch.testing.assert_close(out[:, :2, :3], _normalised(image))
    pad = torch.ones(4, 4, dtype=torch.bool)
    pad[:2, :3] = False
    torch.testing.assert_close(out[:, pad], PAD[:, None].expand(3, int(pad.sum())))
    assert torch.equal(lbl[:2, :3], torch.from_numpy(label).long()) and (lbl[pad] == 255).all()


def test_flip_after_pad_before_flip_puts_the_pad_on_the_left() -> None:
    image, label = _small_pair()
    out, lbl = TrainTransform(_config(flip_prob=1.0))(image, label, np.random.default_rng(0))
    torch.testing.assert_close(out[:, :2, 1:], _normalised(image[:, ::-1].copy()))
    torch.testing.assert_close(out[:, :, 0], PAD[:, None].expand(3, 4))
    torch.testing.assert_close(out[:, 2:, :], PAD[:, None, None].expand(3, 2, 4))
    assert lbl.tolist() == [[255, 2, 1, 0], [255, 5, 4, 3], [255] * 4, [255] * 4]


def test_pad_after_normalize_is_zero_bottom_right_after_the_flip() -> None:
    image, label = _small_pair()
    out, lbl = TrainTransform(_config(flip_prob=1.0, pad_at="after_normalize"))(
        image, label, np.random.default_rng(0)
    )
    torch.testing.assert_close(out[:, :2, :3], _normalised(image[:, ::-1].copy()))
    assert (out[:, 2:] == 0).all() and (out[:, :, 3:] == 0).all()
    assert lbl.tolist() == [[2, 1, 0, 255], [5, 4, 3, 255], [255] * 4, [255] * 4]


def test_photometric_distortion_acts_on_the_pad_before_flip() -> None:
    image, label = _small_pair()
    # Draws: short edge 0, crop (0, 0), no flip (0.9 >= 0.5), brightness on with +10, contrast last, then
    # contrast, saturation and hue off.
    rng = ScriptedRng(0, 0, 0, 0.9, 1, 10.0, 0, 0, 0, 0)
    out, lbl = TrainTransform(_config(flip_prob=0.5, photometric=True))(image, label, rng)
    assert not rng.values
    torch.testing.assert_close(out[:, 3, 3], (10 - MEAN) / STD)  # the padded 0 brightened to 10
    torch.testing.assert_close(out[:, :2, :3], _normalised(image + 10))
    assert (lbl[2:] == 255).all() and (lbl[:, 3] == 255).all()


# --- photometric distortion -------------------------------------------------------------------------------

PIXELS = np.array([[[10, 20, 30], [200, 100, 50]], [[0, 0, 0], [255, 255, 255]]], np.uint8)
COLOURS = np.array([[[200, 0, 0], [200, 100, 100]], [[128, 128, 128], [255, 255, 255]]], np.uint8)


def test_convert_clips_and_truncates() -> None:
    # Brightness +10.7: 10 -> 20.7 -> 20; 255 -> 265.7 -> 255.
    assert convert(PIXELS, 1.0, 10.7).tolist() == [[[20, 30, 40], [210, 110, 60]], [[10, 10, 10], [255] * 3]]
    # Brightness -20.5: 20 -> -0.5 -> 0; 30 -> 9.5 -> 9 (truncated, not rounded).
    assert convert(PIXELS, 1.0, -20.5).tolist() == [[[0, 0, 9], [179, 79, 29]], [[0, 0, 0], [234] * 3]]
    # Contrast x1.5: 200 -> 300 -> 255.
    assert convert(PIXELS, 1.5).tolist() == [[[15, 30, 45], [255, 150, 75]], [[0, 0, 0], [255] * 3]]


def test_saturation_scales_the_hsv_s_channel() -> None:
    # (200, 100, 100): V = 200, S = 127 (OpenCV), H = 0. x0.5: S = 63 -> min = 200 * 192 / 255 = 150.6 -> 151.
    # (200, 0, 0): S = 255 -> 127 -> min = 200 * 128 / 255 = 100.4 -> 100. Grey and white keep S = 0.
    half = [[[200, 100, 100], [200, 151, 151]], [[128, 128, 128], [255, 255, 255]]]
    assert scale_saturation(COLOURS, 0.5).tolist() == half
    # x1.5: S = 190.5 -> 190 -> min = 200 * 65 / 255 = 51.0; 255 * 1.5 clips to 255 (red unchanged).
    more = [[[200, 0, 0], [200, 51, 51]], [[128, 128, 128], [255, 255, 255]]]
    assert scale_saturation(COLOURS, 1.5).tolist() == more


def test_hue_shifts_opencv_hue_modulo_180() -> None:
    black = COLOURS.copy()
    black[1, 1] = 0
    # Red (H = 0) + 60 units = 120 degrees: green. -18 -> 162 (324 degrees): R = V, G = min,
    # B = V - (V - min) 0.4: (200, 0, 120) and (200, 100, 160) for min = 100.4.
    assert shift_hue(black, 60).tolist() == [[[0, 200, 0], [100, 200, 100]], [[128, 128, 128], [0, 0, 0]]]
    assert shift_hue(black, -18).tolist() == [[[200, 0, 120], [200, 100, 160]], [[128, 128, 128], [0, 0, 0]]]
    assert np.array_equal(shift_hue(black, 180), black)


def _mmseg_bgr_saturation(bgr: np.ndarray, factor: float) -> np.ndarray:
    """mmseg's step as written, on BGR: bgr2hsv, S scaled with clip and uint8 truncation, hsv2bgr."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1].astype(np.float32) * factor, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _mmseg_bgr_hue(bgr: np.ndarray, delta: int) -> np.ndarray:
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + delta) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def test_rgb_steps_equal_mmseg_bgr_steps_with_channels_reversed() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for factor in (0.5, 0.83, 1.37, 1.5):
        assert np.array_equal(scale_saturation(rgb, factor), _mmseg_bgr_saturation(bgr, factor)[..., ::-1])
    for delta in (-18, -5, 7, 17):
        assert np.array_equal(shift_hue(rgb, delta), _mmseg_bgr_hue(bgr, delta)[..., ::-1])
    assert not np.array_equal(shift_hue(rgb, 7), rgb)


@pytest.mark.parametrize("contrast_second", [True, False])
def test_photometric_order_and_draws(contrast_second: bool) -> None:
    transform = TrainTransform(TrainTransformConfig())
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    # brightness on (+10), mode, [contrast on x1.5], saturation on x0.5, hue on -18, [contrast on x1.5]
    head, contrast = [1, 10.0, int(contrast_second)], [1, 1.5]
    script = head + contrast + [1, 0.5, 1, -18] if contrast_second else head + [1, 0.5, 1, -18] + contrast
    rng = ScriptedRng(*script)
    out = transform.photometric(image, rng)
    bright = convert(image, 1.0, 10.0)
    second = shift_hue(scale_saturation(convert(bright, 1.5), 0.5), -18)
    last = convert(shift_hue(scale_saturation(bright, 0.5), -18), 1.5)
    assert not np.array_equal(second, last)  # the position of contrast matters
    assert np.array_equal(out, second if contrast_second else last) and not rng.values
    assert ("uniform", -32.0, 32.0) in rng.calls and ("uniform", 0.5, 1.5) in rng.calls
    assert ("integers", -18, 18) in rng.calls  # as mmseg's randint(-18, 18): 18 itself never drawn


def test_photometric_steps_are_skipped_on_a_zero_coin() -> None:
    image = np.random.default_rng(2).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    rng = ScriptedRng(0, 1, 0, 0, 0)  # brightness off, contrast second but off, saturation and hue off
    assert np.array_equal(TrainTransform().photometric(image, rng), image) and not rng.values


def test_hue_draw_excludes_the_high_end() -> None:
    draws = np.random.default_rng(0).integers(-18, 18, 5000)
    assert draws.min() == -18 and draws.max() == 17


# --- whole transform --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_at", ["before_flip", "after_normalize"])
def test_full_transform_is_deterministic_for_a_seed(pad_at: str) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (30, 45), dtype=np.uint8)
    transform = TrainTransform(TrainTransformConfig(base_size=24, crop_size=(24, 24), pad_at=pad_at))
    first = transform(image, label, np.random.default_rng(7))
    second = transform(image, label, np.random.default_rng(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape == (3, 24, 24) and first[1].dtype == torch.int64
    others = [transform(image, label, np.random.default_rng(seed))[0] for seed in range(8, 12)]
    assert not any(torch.equal(first[0], other) for other in others)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"hue_delta": 0.1}, "hue_delta"), ({"hue_delta": 91}, "hue_delta"), ({"pad_at": "before"}, "pad_at")],
)
def test_config_rejects_old_or_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainTransformConfig(**kwargs)


def test_test_time_resize_is_opencv_bilinear_without_antialias() -> None:
    """mmseg's test Resize: OpenCV INTER_LINEAR on uint8, then normalisation; we resize before normalising
    in float, so values differ from OpenCV's by its uint8 rounding only (< 1 grey level)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    label = np.zeros((30, 40), dtype=np.uint8)
    config = EvalTransformConfig(fit=(16, 12), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out, out_label = EvalTransform(config)(image, label)
    expected = cv2.resize(image, (16, 12), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert out.shape == (3, 12, 16) and out_label.shape == (30, 40)
    assert np.abs(out.permute(1, 2, 0).numpy() - expected).max() <= 1.0
    area = cv2.resize(image, (16, 12), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(out.permute(1, 2, 0).numpy() - area).max() > 10
