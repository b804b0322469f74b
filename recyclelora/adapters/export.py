"""The trained update as a plain LoRA on the untouched pretrained weights (for peft and other tools).

A dual adapter layer computes ``W_res + s (B A)`` with ``B = [B_main | B_sub]``, ``A = [A_main; A_sub]`` and
``W_res = W0 - s B0 A0`` (the initial factors). So ``W = W0 + s (B A - B0 A0) = W0 + s B' A'`` with
``A' = [A; A0]`` and ``B' = [B | -B0]``: one LoRA of twice the rank on ``W0``, no residual needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recyclelora.adapters.factors import Factors
from recyclelora.adapters.inject import adapter_layers
from recyclelora.errors import InvalidInputError
from recyclelora.io import atomic_write_text, save_safetensors

#: peft's file names in an adapter folder (``PeftModel.from_pretrained`` reads them).
WEIGHTS_NAME, CONFIG_NAME = "adapter_model.safetensors", "adapter_config.json"


@dataclass(frozen=True)
class LoraDelta:
    """``W = W0 + (lora_alpha / rank) B' A'`` per layer, in peft's ``lora_A.weight`` / ``lora_B.weight`` names."""

    state_dict: dict[str, torch.Tensor]
    rank: int
    lora_alpha: float
    target_modules: tuple[str, ...]

    def peft_config(self, base_model: str) -> dict[str, object]:
        """peft's ``LoraConfig`` of this update on ``base_model`` (e.g. a timm name), as ``adapter_config.json``."""
        return {
            "peft_type": "LORA",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "lora_dropout": 0.0,
            "bias": "none",
        }

    def save_pretrained(self, folder: str | os.PathLike[str], base_model: str) -> Path:
        """Write a peft adapter folder (:data:`WEIGHTS_NAME`, :data:`CONFIG_NAME`), each file atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors({f"base_model.model.{k}": v for k, v in self.state_dict.items()}, folder / WEIGHTS_NAME)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.peft_config(base_model), indent=2) + "\n")
        return folder


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
        raise InvalidInputError("the model has no adapter layers")
    if len(ranks) != 1 or len(scalings) != 1:
        raise InvalidInputError(f"layers differ in rank {sorted(ranks)} or scaling {sorted(scalings)}: no single LoRA config")
    rank, scaling = ranks.pop(), scalings.pop()
    targets = tuple(sorted({name.rsplit(".", 1)[-1] for name, _ in adapter_layers(model)}))
    return LoraDelta(state, rank, scaling * rank, targets)
