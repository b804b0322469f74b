"""Segmentor: backbone + head wiring, input-size scores, training losses and graph export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recyclelora.models.heads import HeadConfig, build_head
from recyclelora.models.segmentor import Segmentor

NUM_CLASSES = 4


class FakePatch14Backbone(nn.Module):
    """A ViT-shaped stand-in: a 14-pixel patch grid rescaled x4, x2, x1, x0.5 (strides 3.5, 7, 14, 28)."""

    out_channels = (8, 16, 16, 24)

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, kernel_size=14, stride=14)
        self.levels = nn.ModuleList(nn.Conv2d(16, c, kernel_size=3, padding=1) for c in self.out_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        grid = torch.relu(self.patch(x))
        scaled = [
            F.interpolate(grid, scale_factor=4.0, mode="bilinear", align_corners=False),
            F.interpolate(grid, scale_factor=2.0, mode="bilinear", align_corners=False),
            grid,
            F.max_pool2d(grid, kernel_size=2, ceil_mode=True),
        ]
        return [level(s) for level, s in zip(self.levels, scaled, strict=True)]


def head_config(kind: str) -> HeadConfig:
    if kind == "light":
        return HeadConfig(kind="light", num_classes=NUM_CLASSES, channels=16)
    return HeadConfig(
        kind="mask2former", num_classes=NUM_CLASSES, channels=32, hidden_dim=32, num_heads=4, num_queries=3,
        pixel_decoder_layers=1, decoder_layers=1, dim_feedforward=32, pixel_decoder_feedforward_dim=32,
        train_num_points=64,
    )  # fmt: skip


def make_segmentor(kind: str) -> Segmentor:
    torch.manual_seed(0)
    backbone = FakePatch14Backbone()
    return Segmentor(backbone, build_head(head_config(kind), backbone.out_channels))


def images(height: int = 61, width: int = 90) -> Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))


KINDS = ["light", "mask2former"]


@pytest.mark.parametrize("kind", KINDS)
def test_scores_come_at_the_input_size_when_14_does_not_divide_it(kind):
    model = make_segmentor(kind).eval()
    with torch.no_grad():
        scores = model(images())
    assert model.num_classes == NUM_CLASSES
    assert scores.shape == (2, NUM_CLASSES, 61, 90)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("kind", KINDS)
def test_forward_train_losses_train_backbone_and_head(kind):
    model = make_segmentor(kind).train()
    labels = torch.randint(0, NUM_CLASSES, (2, 61, 90), generator=torch.Generator().manual_seed(1))
    labels[:, :5] = 255
    losses = model.forward_train(images(), labels)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    losses["loss"].backward()
    assert model.backbone.patch.weight.grad is not None and model.backbone.patch.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())


def test_labels_must_match_the_images():
    model = make_segmentor("light")
    with pytest.raises(ValueError, match=r"\(B, H, W\) = \(2, 61, 90\)"):
        model.forward_train(images(), torch.zeros(2, 60, 90, dtype=torch.long))


def test_backbone_and_head_channels_must_agree():
    backbone = FakePatch14Backbone()
    head = build_head(head_config("light"), (8, 16, 16, 32))
    with pytest.raises(ValueError, match="build_head"):
        Segmentor(backbone, head)
    light = build_head(head_config("light"), backbone.out_channels)
    with pytest.raises(ValueError, match="out_channels"):
        Segmentor(nn.Identity(), light)
    with pytest.raises(ValueError, match="out_channels, a sequence of ints"):
        Segmentor(nn.Conv2d(3, 8, 1), light)  # a conv's out_channels is one int, not one per level
    with pytest.raises(TypeError, match="SegHead"):
        Segmentor(backbone, nn.Conv2d(8, 4, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_inference_path_exports_as_one_graph(kind):
    model = make_segmentor(kind).eval()
    x = images()
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_light_segmentor_traces_and_matches_eager_on_new_inputs():
    model = make_segmentor("light").eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (images(),))
        other = torch.randn(1, 3, 61, 90)
        torch.testing.assert_close(traced(other), model(other))


def test_configs_of_older_checkpoints_keep_the_pyramid_and_resampling_they_were_trained_with():
    from recyclelora.models.config import ModelConfig
    from tests.helpers import tiny_model_config

    saved = tiny_model_config().to_dict()
    assert saved["backbone"]["pyramid"] == "interpolate" and saved["backbone"]["embed_resample"] == "bicubic"
    assert ModelConfig.from_dict(saved) == tiny_model_config()
    for key in ("pyramid", "embed_resample"):
        del saved["backbone"][key]
    legacy = ModelConfig.from_dict(saved).backbone
    assert (legacy.pyramid, legacy.embed_resample) == ("learned", "pinv")
