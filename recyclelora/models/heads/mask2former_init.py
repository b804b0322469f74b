"""mmdet's Mask2Former weight initialisation (``Mask2FormerHead.init_weights`` and
``MSDeformAttnPixelDecoder.init_weights``, the published head's), applied to transformers' modules.

Rules, by group (``fan`` = fan_in + fan_out):

- pixel-decoder input projections (1x1 convs of the three coarse levels): Xavier uniform, gain 1, bias 0;
- lateral conv, output conv and mask-feature projection: caffe2 Xavier, ``U(-sqrt(3 / fan_in), +)``, bias 0;
- pixel-decoder level encoding: ``N(0, 1)``;
- deformable-attention encoder: every matrix Xavier normal ``N(0, 2 / fan)``, then each deformable attention
  reset (sampling offsets 0 with the grid bias, attention weights 0, value and output projections Xavier
  uniform with bias 0); the FFN biases keep PyTorch's Linear default;
- masked-attention decoder: every matrix Xavier normal, with self-attention's q, k, v drawn as mmdet's one fused
  ``(3d, d)`` in-projection (std ``sqrt(2 / 4d)``, not ``sqrt(2 / 2d)``); attention biases 0, FFN biases
  PyTorch's Linear default;
- decoder input projections (only when ``hidden_dim`` differs from the pixel decoder's width): caffe2 Xavier;
- class predictor and mask MLP: PyTorch's Linear default (``U(-1/sqrt(fan_in), +)`` bounds, weight std
  ``1/sqrt(3 fan_in)``); query and level embeddings: ``N(0, 1)`` (transformers' init already does these).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention as DeformableAttention,
)


def caffe2_xavier_(conv: nn.Conv2d) -> None:
    """Detectron's ``c2_xavier_fill``: ``kaiming_uniform_(a=1)``, i.e. ``U(-sqrt(3 / fan_in), +)``; bias 0."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _linear_default_bias_(linear: nn.Linear) -> None:
    """PyTorch's default Linear bias, ``U(-1/sqrt(fan_in), +1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.bias, -bound, bound)


def _reset_deformable_attention(attention: DeformableAttention, sampling_bias: Tensor) -> None:
    nn.init.zeros_(attention.sampling_offsets.weight)
    with torch.no_grad():
        attention.sampling_offsets.bias.copy_(sampling_bias)
    nn.init.zeros_(attention.attention_weights.weight)
    nn.init.zeros_(attention.attention_weights.bias)
    for projection in (attention.value_proj, attention.output_proj):
        nn.init.xavier_uniform_(projection.weight)
        nn.init.zeros_(projection.bias)


def _init_pixel_decoder(decoder: nn.Module) -> None:
    for projection in decoder.input_projections:
        nn.init.xavier_uniform_(projection[0].weight)
        nn.init.zeros_(projection[0].bias)
    for conv in (decoder.adapter_1[0], decoder.layer_1[0], decoder.mask_projection):
        caffe2_xavier_(conv)
    nn.init.normal_(decoder.level_embed, std=1.0)
    attentions = [module for module in decoder.encoder.modules() if isinstance(module, DeformableAttention)]
    grids = [attention.sampling_offsets.bias.detach().clone() for attention in attentions]  # transformers' = mmdet's
    for parameter in decoder.encoder.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_normal_(parameter)
    for attention, grid in zip(attentions, grids):
        _reset_deformable_attention(attention, grid)
    for layer in decoder.encoder.layers:
        _linear_default_bias_(layer.fc1)
        _linear_default_bias_(layer.fc2)


def _init_transformer_decoder(decoder: nn.Module) -> None:
    for name, parameter in decoder.named_parameters():
        if parameter.dim() > 1 and not name.startswith("mask_predictor."):
            nn.init.xavier_normal_(parameter)
    for layer in decoder.layers:
        attention = layer.self_attn
        fused_std = math.sqrt(2.0 / (attention.q_proj.in_features + 3 * attention.q_proj.out_features))
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            nn.init.normal_(projection.weight, std=fused_std)
        _linear_default_bias_(layer.fc1)
        _linear_default_bias_(layer.fc2)
    for module in decoder.mask_predictor.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()


def init_as_mmdet(pixel_decoder: nn.Module, transformer_module: nn.Module, class_predictor: nn.Linear) -> None:
    """Re-initialise transformers' Mask2Former modules (already through their own ``_init_weights``) by mmdet's
    rules (module docstring)."""
    _init_pixel_decoder(pixel_decoder)
    _init_transformer_decoder(transformer_module.decoder)
    for projection in transformer_module.input_projections or ():
        if isinstance(projection, nn.Conv2d):
            caffe2_xavier_(projection)
    class_predictor.reset_parameters()
