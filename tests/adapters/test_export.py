from __future__ import annotations

import copy

import pytest
import torch

from recyclelora import AdapterConfig, inject_adapters
from recyclelora.adapters import adapter_layers
from recyclelora.adapters.export import lora_delta
from tests.helpers import tiny_vit


def test_lora_delta_on_the_pretrained_weights_equals_the_adapted_model() -> None:
    pretrained = tiny_vit()
    model = copy.deepcopy(pretrained)
    factors = inject_adapters(model, AdapterConfig(rank_main=6, rank_sub=2))
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for p in (layer.lora_A_main, layer.lora_B_main, layer.lora_A_sub, layer.lora_B_sub):
                p.add_(torch.randn_like(p) * 0.2)
    delta = lora_delta(model, factors)
    assert delta.rank == 16 and delta.lora_alpha == pytest.approx(1.0 / 8 * 16)
    assert delta.target_modules == ("fc1", "fc2", "proj", "qkv")
    with torch.no_grad():
        for name, linear in ((n, pretrained.get_submodule(n)) for n, _ in adapter_layers(model)):
            a, b = delta.state_dict[f"{name}.lora_A.weight"], delta.state_dict[f"{name}.lora_B.weight"]
            linear.weight += (delta.lora_alpha / delta.rank) * (b @ a)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(pretrained.forward_features(x), model.forward_features(x), rtol=1e-4, atol=1e-5)


def test_lora_delta_needs_the_initial_factors() -> None:
    model = tiny_vit()
    factors = inject_adapters(model, AdapterConfig(rank_main=6, rank_sub=2))
    factors.pop(next(iter(factors)))
    with pytest.raises(KeyError, match="no initial factors"):
        lora_delta(model, factors)
