"""The trained update as a plain LoRA on the untouched pretrained weights (for peft and other tools).

A dual adapter layer computes ``W_res + s (B A)`` with ``B = [B_main | B_sub]``, ``A = [A_main; A_sub]`` and
``W_res = W0 - s B0 A0`` (the initial factors). So ``W = W0 + s (B A - B0 A0) = W0 + s B' A'`` with
``A' = [A; A0]`` and ``B' = [B | -B0]``: one LoRA of twice the rank on ``W0``, no residual needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recyclelora.adapters.factors import Factors
from recyclelora.adapters.inject import adapter_layers


@dataclass(frozen=True)
class LoraDelta:
    """``W = W0 + (lora_alpha / rank) B' A'`` per layer, in peft's ``lora_A.weight`` / ``lora_B.weight`` names."""

    state_dict: dict[str, torch.Tensor]
    rank: int
    lora_alpha: float
    target_modules: tuple[str, ...]


def lora_delta(model: nn.Module, init_factors: dict[str, Factors]) -> LoraDelta:
    """The trained update of every adapter layer of ``model`` as a rank-``2 (r_main + r_sub)`` LoRA.

    ``init_factors`` are the layer's initial factors as :func:`~recyclelora.inject_adapters` returned them
    (or as a checkpoint stores them), keyed by the same names.
    """
    state: dict[str, torch.Tensor] = {}
    ranks, scalings = set(), set()
    for name, layer in adapter_layers(model):
        if name not in init_factors:
            raise KeyError(f"no initial factors for adapter layer {name}: pass the factors its residual was built from")
        initial = init_factors[name]
        a = torch.cat([layer.lora_A_main, layer.lora_A_sub, initial.a_main, initial.a_sub], dim=0)
        b = torch.cat([layer.lora_B_main, layer.lora_B_sub, -initial.b_main, -initial.b_sub], dim=1)
        state[f"{name}.lora_A.weight"] = a.detach().float().contiguous()
        state[f"{name}.lora_B.weight"] = b.detach().float().contiguous()
        ranks.add(a.shape[0])
        scalings.add(layer.scaling)
    if not state:
        raise ValueError("the model has no adapter layers")
    if len(ranks) != 1 or len(scalings) != 1:
        raise ValueError(f"layers differ in rank {sorted(ranks)} or scaling {sorted(scalings)}: no single LoRA config")
    rank, scaling = ranks.pop(), scalings.pop()
    targets = tuple(sorted({name.rsplit(".", 1)[-1] for name, _ in adapter_layers(model)}))
    return LoraDelta(state, rank, scaling * rank, targets)
