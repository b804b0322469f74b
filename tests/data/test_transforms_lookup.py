"""The training transform's fast paths give the values of the formulas they replace, bit for bit.

``convert`` and the normalisation look their per-pixel formulas up in 256-entry tables, and ``TrainTransform``
reads its input arrays without copying them: each is checked here against the formula computed per pixel
(written out in the test) and against every kind of input the transform accepts.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from recyclelora.data.transform_config import TrainTransformConfig
from recyclelora.data.transforms import LEVELS, TrainTransform, convert, normalize


def _formula(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """PhotoMetricDistortion.convert computed per pixel, as mmseg writes it."""
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(5))
def test_convert_is_the_formula_on_every_level(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = np.stack([LEVELS, LEVELS[::-1], rng.permutation(LEVELS)], 1).reshape(16, 16, 3)
    for alpha, beta in [(1.0, rng.uniform(-32, 32)), (rng.uniform(0.5, 1.5), 0.0), (1.0, -32.0), (1.5, 0.0)]:
        assert np.array_equal(convert(image, alpha, beta), _formula(image, alpha, beta)), (alpha, beta)


def test_convert_of_a_channel_view_leaves_the_other_channels() -> None:
    hsv = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    before = hsv.copy()
    saturation = convert(hsv[..., 1], 1.37)  # the saturation step converts a strided view
    assert saturation.shape == (7, 9)
    assert np.array_equal(saturation, _formula(before[..., 1], 1.37, 0.0))
    assert np.array_equal(hsv, before)


@pytest.mark.parametrize(
    "config", [TrainTransformConfig(), TrainTransformConfig(mean=(0.0, 127.5, 255.0), std=(1.0, 0.3, 77.7))]
)
def test_normalisation_by_lookup_equals_normalize(config: TrainTransformConfig) -> None:
    transform = TrainTransform(config)
    rng = np.random.default_rng(1)
    image = np.concatenate(
        [np.repeat(LEVELS[None, :, None], 3, 2), rng.integers(0, 256, (5, 256, 3))]
    ).astype(np.uint8)
    expected = normalize(torch.from_numpy(image).permute(2, 0, 1), config.mean, config.std)
    out = transform.normalize(image)
    assert out.dtype == torch.float32 and out.shape == (3, 6, 256)
    assert torch.equal(out, expected)


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 90 x 130 image with two label regions, so crops pass the class-ratio check sometimes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    label = np.zeros((90, 130), np.uint8)
    label[:, 60:] = 7
    label[80:] = 255
    return image, label


def test_train_transform_reads_every_input_kind_alike_and_never_writes_it() -> None:
    config = TrainTransformConfig(crop_size=(48, 64), base_size=40, cat_max_ratio=0.75)
    transform = TrainTransform(config)
    for seed in range(12):  # flips, pads (short edges 20..80 below the 48 rows) and photometric coins vary
        image, label = _scene(seed)
        frozen_image, frozen_label = image.copy(), label.copy()
        frozen_image.flags.writeable = frozen_label.flags.writeable = False  # as Pillow's arrays come
        outputs = [
            transform(img, lbl, np.random.default_rng(seed))
            for img, lbl in [
                (image, label),
                (frozen_image, frozen_label),
                (torch.from_numpy(image), torch.from_numpy(label)),
            ]
        ]
        for out, lbl in outputs[1:]:
            assert torch.equal(out, outputs[0][0]) and torch.equal(lbl, outputs[0][1])
        assert np.array_equal(image, frozen_image) and np.array_equal(label, frozen_label)


def test_train_transform_refuses_bad_inputs_as_before() -> None:
    image, label = _scene(0)
    transform = TrainTransform()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"expected an RGB image of shape \(H, W, 3\) and dtype uint8, got "
                       r"\(90, 130, 3\) float32"):  # fmt: skip
        transform(image.astype(np.float32), label, rng)
    with pytest.raises(ValueError, match=r"got \(90, 130, 4\) uint8"):
        transform(cv2.cvtColor(image, cv2.COLOR_RGB2RGBA), label, rng)
    with pytest.raises(ValueError, match=r"expected a uint8 label of shape \(90, 130\) \(the image's\), got "
                       r"\(90, 129\) uint8"):  # fmt: skip
        transform(image, label[:, 1:], rng)
    with pytest.raises(ValueError, match=r"got \(90, 130\) int64"):
        transform(torch.from_numpy(image), torch.from_numpy(label).long(), rng)
