"""The gather formulation of deformable sampling: transformers' grid_sample outputs and gradients, in the head."""

from __future__ import annotations

import pytest
import torch
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    multi_scale_deformable_attention,
)

from recyclelora.models.heads import HeadConfig, Mask2FormerHead
from recyclelora.models.heads.deformable import DeformableAttention, deformable_sampling
from recyclelora.models.heads.mask2former import mask2former_config

# Uneven levels, none square, one a single row: every clamp and border case of the four corners.
SHAPES = [(7, 5), (4, 3), (1, 2)]


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    batch, heads, dim, points = 2, 3, 4, 4
    length = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, length, heads, dim, generator=generator, dtype=dtype)
    # locations beyond [0, 1] on both sides: corners outside the map must read zero
    locations = torch.rand(batch, 9, heads, len(SHAPES), points, 2, generator=generator, dtype=dtype) * 1.6 - 0.3
    attention = torch.rand(batch, 9, heads, len(SHAPES), points, generator=generator, dtype=dtype)
    return value, locations, attention


def _outputs_and_grads(fn, dtype: torch.dtype) -> list[torch.Tensor]:
    tensors = [t.requires_grad_() for t in _inputs(dtype)]
    out = fn(tensors[0], SHAPES, tensors[1], tensors[2])
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype))
    return [out.detach()] + [t.grad for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_sampling_equals_grid_sample_in_value_and_every_gradient(dtype: torch.dtype) -> None:
    ours = _outputs_and_grads(deformable_sampling, dtype)
    reference = _outputs_and_grads(multi_scale_deformable_attention, dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for name, mine, theirs in zip(("output", "value", "locations", "attention"), ours, reference, strict=True):
        assert mine.shape == theirs.shape, name
        assert (mine - theirs).abs().max() <= tolerance * theirs.abs().max(), name
    assert reference[2].abs().sum() > 0  # the locations' gradient is not trivially zero


def _attention_pair() -> tuple[DeformableAttention, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention]:
    torch.manual_seed(0)
    theirs = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(embed_dim=16, num_heads=4, n_levels=3,
                                                                         n_points=2)  # fmt: skip
    for parameter in theirs.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    ours = DeformableAttention(embed_dim=16, num_heads=4, n_levels=3, n_points=2)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def test_deformable_attention_module_equals_transformers_module_with_the_same_weights() -> None:
    ours, theirs = _attention_pair()
    length = sum(h * w for h, w in SHAPES)
    hidden = torch.randn(2, length, 16)
    kwargs = {
        "encoder_hidden_states": hidden, "position_embeddings": torch.randn(2, length, 16),
        "reference_points": torch.rand(2, length, 3, 2), "spatial_shapes_list": SHAPES,
        "attention_mask": torch.rand(2, length) < 0.2,  # masked pixels carry no value
    }  # fmt: skip
    (mine, my_weights), (reference, weights) = ours(hidden, **kwargs), theirs(hidden, **kwargs)
    assert torch.allclose(mine, reference, atol=1e-5) and torch.equal(my_weights, weights)
    mine.square().sum().backward()
    reference.square().sum().backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name


def test_box_reference_points_keep_transformers_own_sampling() -> None:
    ours, theirs = _attention_pair()
    hidden = torch.randn(1, 6, 16)
    boxes = torch.rand(1, 6, 3, 4)
    kwargs = {"encoder_hidden_states": torch.randn(1, 3 * 2 + 2 * 1 + 1, 16), "reference_points": boxes,
              "spatial_shapes_list": [(3, 2), (2, 1), (1, 1)]}  # fmt: skip
    assert torch.equal(ours(hidden, **kwargs)[0], theirs(hidden, **kwargs)[0])


def test_the_head_samples_with_the_gather_and_keeps_transformers_parameter_names() -> None:
    config = HeadConfig(kind="mask2former", num_classes=5, channels=32, hidden_dim=32, num_heads=4,
                        pixel_decoder_layers=2, pixel_decoder_feedforward_dim=64)  # fmt: skip
    head = Mask2FormerHead((8, 16, 16, 24), config)
    layers = head.model.pixel_decoder.encoder.layers
    assert all(type(layer.self_attn) is DeformableAttention for layer in layers)
    plain = Mask2FormerPixelDecoder(mask2former_config(config), feature_channels=[8, 16, 16, 24])
    assert head.model.pixel_decoder.state_dict().keys() == plain.state_dict().keys()  # checkpoints still load
    assert layers[0].self_attn.sampling_offsets.bias.abs().max() == 4  # the grid init reached the new modules


@pytest.mark.parametrize("init", ["mmdet", "transformers"])
def test_the_pixel_decoder_matches_transformers_at_init_where_every_location_lies_on_a_pixel_edge(init: str) -> None:
    """Both inits place each point an integer number of pixels from its query's centre: on the edge between two
    cells, where the locations' gradient is one-sided. The gather must take grid_sample's side."""
    torch.manual_seed(0)
    config = HeadConfig(kind="mask2former", num_classes=5, channels=32, hidden_dim=32, num_heads=4,
                        pixel_decoder_layers=2, pixel_decoder_feedforward_dim=64, init=init)  # fmt: skip
    ours = Mask2FormerHead((8, 16, 16, 24), config).model.pixel_decoder
    theirs = Mask2FormerPixelDecoder(mask2former_config(config), feature_channels=[8, 16, 16, 24])
    theirs.load_state_dict(ours.state_dict())
    features = [torch.randn(2, c, h, w) for c, (h, w) in zip((8, 16, 16, 24), ((24, 20), (12, 10), (6, 5), (3, 3)))]
    results = []
    for decoder in (ours, theirs):
        out = decoder(features).mask_features
        out.square().mean().backward()
        results.append([out.detach()] + [p.grad for p in decoder.parameters()])
    names = ["mask_features"] + [name for name, _ in ours.named_parameters()]
    for name, mine, reference in zip(names, *results, strict=True):
        assert (mine - reference).abs().max() <= 1e-4 * reference.abs().max() + 1e-7, name


@pytest.mark.parametrize("width", [3, 5, 10, 20, 24])
def test_locations_on_pixel_edges_take_grid_samples_side(width: int) -> None:
    """Points an integer number of pixels from each pixel centre, out past both borders too."""
    torch.manual_seed(0)
    value = torch.randn(1, width, 1, 1)
    u = ((torch.arange(width) + 0.5) / width)[:, None] + torch.tensor([-2.0, -1.0, 1.0, 2.0]) / width
    locations = torch.stack([u, torch.full_like(u, 0.5)], -1).view(1, width, 1, 1, 4, 2)
    grads = []
    for sampler in (deformable_sampling, multi_scale_deformable_attention):
        leaf = locations.clone().requires_grad_()
        sampler(value, [(1, width)], leaf, torch.ones(1, width, 1, 1, 4)).sum().backward()
        grads.append(leaf.grad)
    assert torch.allclose(*grads, atol=1e-5)
