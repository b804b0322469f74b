"""Multi-scale deformable attention whose sampling is one weighted gather: faster than transformers' per-level
``grid_sample`` on a CPU, with the same outputs and gradients.

Deformable attention reads, for query ``q`` and head ``h``, ``sum_{l,p} a[q,h,l,p] * bilinear(V_l^h, (u, v))`` with
``(u, v) in [0, 1]^2`` the sampling location of point ``p`` on level ``l`` (``W_l x H_l``). With
``align_corners=False`` and zero padding, as transformers' ``grid_sample`` call, bilinear sampling reads the four
pixels around ``(x, y) = (u W_l - 1/2, v H_l - 1/2)`` with weights ``(1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx fy``
(``fx, fy`` the fractional parts) and counts a pixel outside the map as 0. So every output row is
``out[n] = sum_k w[n,k] * table[i[n,k]]`` over ``K = 4 L P`` (index, weight) pairs, ``w`` the attention weight
times the corner's bilinear weight: one ``embedding_bag`` forward. Its backward is ``K`` passes of
``index_add_`` (the table's gradient) and ``index_select`` (the weights'), which avoids the sort that
``embedding_bag``'s own backward does. The locations' gradient flows through the corner weights.

Measured at the paper's pixel-decoder shape (``benchmarks/bench_deformable``, docs/benchmarks.md), on CPU only:
on a GPU the module keeps transformers' ``grid_sample`` until the GPU check has compared the two there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)

#: ``torch.profiler`` label of the sampling (forward and backward), for a step's time share.
PROFILE_LABEL = "deformable_sampling"
#: The four corners of a bilinear cell, as ``(dx, dy)``.
_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


class _WeightedGather(torch.autograd.Function):
    """``out[n] = sum_k weights[n, k] * table[index[n, k]]``, ``table (T, D)``, ``index, weights (N, K)``."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weights: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(table, index, weights)
        with torch.profiler.record_function(PROFILE_LABEL):
            return torch.nn.functional.embedding_bag(index, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:  # type: ignore[override]
        table, index, weights = ctx.saved_tensors
        grad = grad.contiguous()
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        with torch.profiler.record_function(PROFILE_LABEL):
            for k in range(index.shape[1]):
                rows = index[:, k]
                if grad_table is not None:
                    grad_table.index_add_(0, rows, grad * weights[:, k, None])
                if grad_weights is not None:
                    grad_weights[:, k] = (table.index_select(0, rows) * grad).sum(-1)
        return grad_table, None, grad_weights


def deformable_sampling(
    value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, attention: Tensor
) -> Tensor:
    """transformers' ``multi_scale_deformable_attention`` as one weighted gather.

    ``value (B, S, H, D)`` holds the ``S = sum_l H_l W_l`` pixels of every level, row-major, level after level;
    ``locations (B, Q, H, L, P, 2)`` are ``(u, v)`` in ``[0, 1]``; ``attention (B, Q, H, L, P)``.
    Returns ``(B, Q, H * D)``.
    """
    batch, length, heads, dim = value.shape
    _, queries, _, levels, _, _ = locations.shape
    sizes = torch.tensor([[width, height] for height, width in shapes], device=value.device)
    starts = sizes.prod(-1).cumsum(0) - sizes.prod(-1)
    # x = (2u - 1) W/2 + (W - 1)/2 in one fused multiply-add, as grid_sample's CPU kernel rounds it: a location on
    # a pixel's edge (every one at the grid init) then falls in the same cell, and the locations' gradient, one-sided
    # there, takes the same side
    half = sizes.view(levels, 1, 2).to(locations.dtype) / 2
    pixel = torch.addcmul(half - 0.5, 2 * locations - 1, half)  # (B, Q, H, L, P, 2)
    corner = pixel.floor()
    fraction = pixel - corner
    corner = corner.long()
    width, height = sizes[:, 0].view(levels, 1), sizes[:, 1].view(levels, 1)
    # table row of (b, s, h) is (b S + s) H + h
    row_base = torch.arange(batch, device=value.device).view(batch, 1, 1, 1, 1) * length
    head = torch.arange(heads, device=value.device).view(1, 1, heads, 1, 1)
    indices, weights = [], []
    for dx, dy in _CORNERS:
        x, y = corner[..., 0] + dx, corner[..., 1] + dy
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        pixel_index = y.clamp(min=0).minimum(height - 1) * width + x.clamp(min=0).minimum(width - 1)
        indices.append((row_base + starts.view(levels, 1) + pixel_index) * heads + head)
        weight_x = fraction[..., 0] if dx else 1 - fraction[..., 0]
        weight_y = fraction[..., 1] if dy else 1 - fraction[..., 1]
        weights.append(weight_x * weight_y * attention * inside)
    index = torch.stack(indices, -1).reshape(batch * queries * heads, -1)
    weight = torch.stack(weights, -1).reshape(batch * queries * heads, -1).to(value.dtype)
    table = value.reshape(batch * length * heads, dim)
    return _WeightedGather.apply(table, index, weight).view(batch, queries, heads * dim)


class DeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """transformers' pixel-decoder deformable attention (same parameters, names and initialisation) that samples
    with :func:`deformable_sampling` on a CPU; elsewhere, and for box reference points, it is transformers' own.

    Query ``q`` at reference point ``r_l`` on level ``l`` samples ``r_l + Delta / (W_l, H_l)``, ``Delta`` its
    learned offsets in pixels, weighted by a softmax over the ``L P`` points of each head.
    """

    def forward(  # type: ignore[override]
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        position_embeddings: Tensor | None = None,
        reference_points: Tensor | None = None,
        spatial_shapes_list: list[tuple[int, int]] | None = None,
        level_start_index: Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor]:
        if hidden_states.device.type != "cpu" or reference_points is None or reference_points.shape[-1] != 2:
            return super().forward(
                hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, position_embeddings=position_embeddings,
                reference_points=reference_points, spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index, output_attentions=output_attentions,
            )  # fmt: skip
        assert encoder_hidden_states is not None and spatial_shapes_list is not None
        queries = self.with_pos_embed(hidden_states, position_embeddings)
        batch, count, _ = queries.shape
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(attention_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], self.n_heads, self.d_model // self.n_heads)
        per_point = (batch, count, self.n_heads, self.n_levels, self.n_points)
        offsets = self.sampling_offsets(queries).view(*per_point, 2)
        attention = self.attention_weights(queries).view(batch, count, self.n_heads, -1).softmax(-1).view(per_point)
        scale = torch.tensor([[width, height] for height, width in spatial_shapes_list], device=queries.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / scale[:, None, :]
        sampled = deformable_sampling(value, spatial_shapes_list, locations, attention)
        return self.output_proj(sampled), attention


def use_gather_sampling(pixel_decoder: torch.nn.Module) -> None:
    """Swap each transformers deformable attention in ``pixel_decoder`` for a :class:`DeformableAttention` with the
    same sizes (before initialisation: the new modules' weights are fresh)."""
    for name, module in list(pixel_decoder.named_modules()):
        if type(module) is Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention:
            parent_name, _, child = name.rpartition(".")
            replacement = DeformableAttention(module.d_model, module.n_heads, module.n_levels, module.n_points)
            setattr(pixel_decoder.get_submodule(parent_name), child, replacement)
