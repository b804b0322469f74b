"""ViTBackbone: pyramid shapes, strides and contents, config validation, patch-size conversion, trainability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from recyclelora.models.backbone import ViTBackbone, default_out_indices, resample_pos_grid_dinov2
from tests.models.conftest import TINY_KWARGS, random_vit, tiny_config


@pytest.mark.parametrize("patch_size", [None, 16])
@pytest.mark.parametrize("size", [(56, 56), (84, 140), (112, 56)])
def test_pyramid_shapes_and_strides(patch_size: int | None, size: tuple[int, int]) -> None:
    backbone = ViTBackbone(tiny_config(patch_size=patch_size)).eval()
    p = patch_size or 14
    height, width = (s // 14 * p for s in size)
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, height, width))
    assert backbone.out_channels == (32, 32, 32, 32)
    assert backbone.strides == (p / 4, p / 2, p, 2 * p)
    gh, gw = height // p, width // p
    assert [tuple(f.shape) for f in features] == [
        (2, 32, 4 * gh, 4 * gw),
        (2, 32, 2 * gh, 2 * gw),
        (2, 32, gh, gw),
        (2, 32, gh // 2, gw // 2),
    ]


def _block_maps(backbone: ViTBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output tokens (no final norm) as (1, C, h, w) maps, computed by hand."""
    vit = backbone.vit
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    maps = []
    for block in vit.blocks:
        tokens = block(tokens)
        maps.append(tokens[:, 1:].reshape(1, x.shape[2] // 14, x.shape[3] // 14, 32).permute(0, 3, 1, 2))
    return maps


def test_interpolated_levels_are_the_chosen_blocks_bilinearly_rescaled() -> None:
    backbone = ViTBackbone(tiny_config(out_indices=(0, 1, 2, 3))).eval()
    assert not list(backbone.neck.parameters())
    x = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        features = backbone(x)
        blocks = _block_maps(backbone, x)
    torch.testing.assert_close(features[2], blocks[2])
    torch.testing.assert_close(features[3], F.avg_pool2d(blocks[3], 2))  # bilinear x0.5 averages 2x2 cells
    for level, size in ((0, (16, 24)), (1, (8, 12))):
        expected = F.interpolate(blocks[level], size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(features[level], expected)


def test_learned_levels_are_the_chosen_blocks_through_the_neck() -> None:
    backbone = ViTBackbone(tiny_config(out_indices=(0, 1, 2, 3), pyramid="learned")).eval()
    x = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        features = backbone(x)
        blocks = _block_maps(backbone, x)
    torch.testing.assert_close(features[2], blocks[2])
    torch.testing.assert_close(features[3], F.max_pool2d(blocks[3], 2))
    torch.testing.assert_close(features[1], backbone.neck[1](blocks[1]))
    torch.testing.assert_close(features[0], backbone.neck[0](blocks[0]))
    assert sum(p.numel() for p in backbone.neck.parameters()) == 3 * (32 * 32 * 4 + 32) + 2 * 32


def test_default_out_indices_end_at_the_last_block() -> None:
    assert default_out_indices(12) == (2, 5, 8, 11)
    assert default_out_indices(24) == (5, 11, 17, 23)
    assert default_out_indices(4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="set out_indices"):
        default_out_indices(3)
    assert ViTBackbone(tiny_config()).out_indices == (0, 1, 2, 3)


def test_input_not_a_multiple_of_the_patch_is_refused() -> None:
    backbone = ViTBackbone(tiny_config())
    with pytest.raises(ValueError, match="multiple of the patch size 14.*e.g. to 56x70"):
        backbone(torch.randn(1, 3, 60, 75))
    with pytest.raises(ValueError, match="at least 28"):
        backbone(torch.randn(1, 3, 14, 56))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"weights": "imagenet"}, "weights='imagenet' is neither"),
        ({"weights": "embedded", "name": "vit_base_patch14_dinov2"}, "needs name='vit_small_patch14_dinov2'"),
        ({"img_size": 0}, "BackboneConfig.img_size must be an integer >= 1, got 0"),
        ({"patch_size": 12.5}, "BackboneConfig.patch_size must be an integer >= 1 or null, got 12.5"),
        ({"out_indices": (1, 2, 3)}, "out_indices must be 4 increasing"),
        ({"out_indices": (0, 2, 2, 3)}, "out_indices must be 4 increasing"),
        ({"out_indices": (-1, 0, 1, 2)}, r"out_indices must be a list of integers, each >= 0 or null"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be a number in \[0, 1\), got 1.0"),
        ({"pyramid": "fpn"}, "pyramid must be one of"),
        ({"embed_resample": "bilinear"}, "embed_resample must be one of"),
        ({"model_kwargs": {"img_size": 64}}, r"model_kwargs may not set \['img_size'\]"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_a_name_timm_does_not_know_is_refused_when_built() -> None:
    """The config imports no torch, so timm's registry is asked when the backbone is built."""
    config = tiny_config(name="not_a_model")
    with pytest.raises(ValueError, match="model.backbone.name='not_a_model' is not a timm model"):
        ViTBackbone(config)


def test_out_indices_beyond_depth_rejected_when_built() -> None:
    with pytest.raises(ValueError, match=r"exceed the 4 blocks"):
        ViTBackbone(tiny_config(out_indices=(1, 2, 3, 4)))


def test_every_trainable_parameter_gets_a_gradient() -> None:
    backbone = ViTBackbone(
        tiny_config(out_indices=(0, 1, 2, 3), model_kwargs={**TINY_KWARGS, "depth": 6}, pyramid="learned")
    )
    backbone.train()
    sum(f.square().mean() for f in backbone(torch.randn(2, 3, 56, 56))).backward()
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert {name for name, p in backbone.named_parameters() if p.grad is not None} == trainable
    assert not any(name.startswith(("vit.blocks.4.", "vit.blocks.5.", "vit.norm.")) for name in trainable)
    assert "vit.blocks.3.attn.qkv.weight" in trainable and "neck.0.0.weight" in trainable


def test_adapters_see_timm_module_names() -> None:
    vit = ViTBackbone(tiny_config()).vit
    names = dict(vit.named_modules())
    assert isinstance(names["blocks.0.attn.qkv"], torch.nn.Linear)
    assert isinstance(names["blocks.3.mlp.fc2"], torch.nn.Linear)


def _smooth_image(size: int) -> torch.Tensor:
    """Low-frequency colour ramps, identical in content at every resolution."""
    t = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([torch.sin(3 * x + y), torch.cos(2 * y - x), x * y])[None]


def test_pinv_patch16_conversion_resamples_kernel_and_grid_and_keeps_cls(tmp_path) -> None:
    source = random_vit()
    path = tmp_path / "patch14.safetensors"
    save_file(source.state_dict(), path)
    config = tiny_config(weights=str(path), patch_size=16, img_size=96, embed_resample="pinv")
    converted = ViTBackbone(config).vit
    assert converted.patch_embed.proj.weight.shape == (32, 3, 16, 16)
    assert converted.pos_embed.shape == (1, 1 + 6 * 6, 32)
    torch.testing.assert_close(converted.cls_token, source.cls_token)
    torch.testing.assert_close(converted.pos_embed[:, :1], source.pos_embed[:, :1])
    torch.testing.assert_close(converted.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    with torch.no_grad():
        before = source.patch_embed.proj(_smooth_image(56))
        after = converted.patch_embed.proj(_smooth_image(64))
        padded_kernel = F.pad(source.patch_embed.proj.weight, (0, 2, 0, 2))
        naive = F.conv2d(_smooth_image(64), padded_kernel, source.patch_embed.proj.bias, stride=16)
    error = ((after - before).norm() / before.norm()).item()
    naive_error = ((naive - before).norm() / before.norm()).item()
    assert error < 0.01 < naive_error


def test_bicubic_patch16_conversion_is_the_published_one(tmp_path) -> None:
    """Kernel: plain bicubic resize (its sum grows ~(16/14)^2); grid: bicubic without antialias; cls kept."""
    source = random_vit(img_size=518)
    path = tmp_path / "patch14.safetensors"
    save_file(source.state_dict(), path)
    converted = ViTBackbone(tiny_config(weights=str(path), patch_size=16, img_size=512)).vit
    kernel = source.patch_embed.proj.weight.detach()
    torch.testing.assert_close(
        converted.patch_embed.proj.weight, F.interpolate(kernel, size=(16, 16), mode="bicubic", align_corners=False)
    )
    grid = source.pos_embed.detach()[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False, antialias=False)
    torch.testing.assert_close(converted.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 1024, 32))
    torch.testing.assert_close(converted.pos_embed[:, :1], source.pos_embed[:, :1])
    antialiased = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(expected, antialiased, atol=1e-4)
    with torch.no_grad():  # a constant patch's response grows by the kernel sum ratio
        ratio = converted.patch_embed.proj.weight.sum((1, 2, 3)) / kernel.sum((1, 2, 3))
    assert 1.2 < ratio.median().item() < 1.4
    pinv = ViTBackbone(tiny_config(weights=str(path), patch_size=16, img_size=512, embed_resample="pinv")).vit
    assert not torch.allclose(pinv.patch_embed.proj.weight, converted.patch_embed.proj.weight, atol=1e-3)


def _cubic_resize_rows(grid: np.ndarray, out: int, scale: float) -> np.ndarray:
    """Resize axis 0 of ``grid`` to ``out`` rows by cubic convolution (a = -0.75, PyTorch's bicubic kernel, border
    samples clamped), sampling source row ``(i + 0.5) / scale - 0.5`` for output row ``i``: written from the
    definition, independent of ``F.interpolate``."""

    def weight(t: float) -> float:
        a, t = -0.75, abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    rows = []
    for i in range(out):
        source = (i + 0.5) / scale - 0.5
        base = int(np.floor(source))
        taps = [(min(max(k, 0), len(grid) - 1), weight(source - k)) for k in range(base - 1, base + 3)]
        rows.append(sum(w * grid[k] for k, w in taps))
    return np.stack(rows)


def test_run_time_grid_follows_the_official_dinov2_rule() -> None:
    """DINOv2 scales the grid by (n + 0.1) / grid, bicubic without antialias; the checkpoint's size is untouched."""
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 5 * 5, 8)
    resized = resample_pos_grid_dinov2(pos, (5, 5), (3, 7), prefix=1)
    grid = pos[0, 1:].reshape(5, 5, 8).double().numpy()
    rows = _cubic_resize_rows(grid, 3, (3 + 0.1) / 5)
    expected = _cubic_resize_rows(rows.transpose(1, 0, 2), 7, (7 + 0.1) / 5).transpose(1, 0, 2)
    np.testing.assert_allclose(resized[0, 1:].reshape(3, 7, 8).numpy(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(resized[:, :1], pos[:, :1])  # the class token's entry is kept
    without_offset = F.interpolate(grid_as_image(pos, 5), size=(3, 7), mode="bicubic", align_corners=False)
    assert not torch.allclose(grid_as_image(resized, 3), without_offset, atol=1e-3)  # the offset matters
    assert resample_pos_grid_dinov2(pos, (5, 5), (5, 5), prefix=1) is pos


def grid_as_image(pos: torch.Tensor, rows: int) -> torch.Tensor:
    """(1, 1 + rows * cols, C) position embeddings -> (1, C, rows, cols), class entry dropped."""
    body = pos[0, 1:]
    return body.reshape(rows, -1, body.shape[-1]).permute(2, 0, 1)[None]


@pytest.mark.parametrize("resample", ["bicubic", "pinv"])
def test_backbone_resamples_its_grid_by_embed_resample(resample: str) -> None:
    """'bicubic' (as published) adds the official DINOv2 grid to the patch tokens, 'pinv' timm's antialiased one."""
    backbone = ViTBackbone(tiny_config(embed_resample=resample)).eval()
    vit = backbone.vit
    with torch.no_grad():
        vit.pos_embed.normal_()
        patches = vit.patch_embed(torch.randn(1, 3, 42, 98))  # (1, 3, 7, 32) against the 4 x 4 grid
        tokens = vit._pos_embed(patches)
        flat = torch.cat([vit.cls_token, patches.reshape(1, -1, 32)], dim=1)
        dinov2 = flat + resample_pos_grid_dinov2(vit.pos_embed, (4, 4), (3, 7), prefix=1)
        timm_rule = flat + resample_abs_pos_embed(vit.pos_embed, (3, 7), (4, 4), num_prefix_tokens=1)
        torch.testing.assert_close(tokens, dinov2 if resample == "bicubic" else timm_rule)
        assert not torch.allclose(dinov2, timm_rule, atol=1e-3)
        same_grid = vit.patch_embed(torch.randn(1, 3, 56, 56))
        expected = torch.cat([vit.cls_token, same_grid.reshape(1, -1, 32)], dim=1) + vit.pos_embed
        torch.testing.assert_close(vit._pos_embed(same_grid), expected)
