from __future__ import annotations

import pytest
import torch
from torch import nn

from recyclelora.eval.sliding import SlidingWindowConfig, slide_inference, whole_inference, window_grid


@pytest.fixture
def conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 5, kernel_size=1).eval()


def test_window_layout_as_mmseg() -> None:
    windows = window_grid(1024, 2048, (512, 512), (341, 341))
    tops = sorted({w[0] for w in windows})
    lefts = sorted({w[2] for w in windows})
    assert tops == [0, 341, 512]  # (1024 - 512 + 340) // 341 + 1 = 3 rows, the last one ends at the border
    assert lefts == [0, 341, 682, 1023, 1364, 1536]
    assert len(windows) == 18
    assert all(b - t == 512 and r - left == 512 for t, b, left, r in windows)


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 64), (65, 200), (300, 17)])
@pytest.mark.parametrize("crop,stride", [((32, 32), (21, 21)), ((16, 40), (16, 7)), ((512, 512), (341, 341))])
def test_windows_cover_every_pixel_inside_the_image(size, crop, stride) -> None:
    height, width = size
    covered = torch.zeros(height, width, dtype=torch.long)
    windows = window_grid(height, width, crop, stride)
    for top, bottom, left, right in windows:
        assert 0 <= top < bottom <= height and 0 <= left < right <= width
        assert (bottom - top, right - left) == (min(crop[0], height), min(crop[1], width))
        covered[top:bottom, left:right] += 1
    assert int(covered.min()) >= 1
    assert max(w[1] for w in windows) == height and max(w[3] for w in windows) == width


def test_crop_covering_image_equals_whole_inference(conv) -> None:
    image = torch.randn(2, 3, 20, 30)
    calls = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return conv(x)

    slid = slide_inference(predict, image, 5, SlidingWindowConfig(crop=(64, 64), stride=(32, 32)))
    assert calls == [(2, 3, 20, 30)]
    torch.testing.assert_close(slid, whole_inference(conv, image, 5))


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_overlapping_windows_on_pointwise_model_equal_whole_inference(conv, batch_size) -> None:
    image = torch.randn(2, 3, 45, 70)
    config = SlidingWindowConfig(crop=(16, 24), stride=(10, 11), batch_size=batch_size)
    calls = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return conv(x)

    slid = slide_inference(predict, image, 5, config)
    torch.testing.assert_close(slid, conv(image), rtol=1e-5, atol=1e-5)
    windows = len(window_grid(45, 70, config.crop, config.stride))
    assert sum(calls) == 2 * windows and max(calls) <= max(batch_size, 2)


def test_overlaps_are_averaged_not_summed() -> None:
    image = torch.zeros(1, 3, 10, 10)

    def predict(x: torch.Tensor) -> torch.Tensor:  # every window scores 1: a sum would show the overlap count
        return torch.ones(x.shape[0], 2, *x.shape[2:])

    out = slide_inference(predict, image, 2, SlidingWindowConfig(crop=(6, 6), stride=(2, 2)))
    torch.testing.assert_close(out, torch.ones(1, 2, 10, 10))


def test_wrong_class_count_or_size_raises(conv) -> None:
    image = torch.randn(1, 3, 20, 20)
    config = SlidingWindowConfig(crop=(8, 8), stride=(8, 8))
    with pytest.raises(ValueError, match="5 class scores per pixel but num_classes=19"):
        slide_inference(conv, image, 19, config)
    with pytest.raises(ValueError, match="num_classes=19"):
        whole_inference(conv, image, 19)
    with pytest.raises(ValueError, match="at the input size"):
        slide_inference(lambda x: conv(x)[..., ::2, ::2], image, 5, config)
    with pytest.raises(ValueError, match="tensor of class scores"):
        whole_inference(lambda x: conv(x)[0], image, 5)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"crop": (8, 8), "stride": (9, 8)}, "stride"),
        ({"crop": (0, 8)}, "crop"),
        ({"stride": (-1, 3)}, "stride"),
        ({"crop": (8,)}, "crop"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_config_validation(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        SlidingWindowConfig(**kwargs)
