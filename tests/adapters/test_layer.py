from __future__ import annotations

import pytest
import torch
from torch import nn

from recyclelora.adapters.factors import lora_factors, rrqr_factors, svd_factors
from recyclelora.adapters.layer import DualLoRALinear


def _linear(out_features: int = 24, in_features: int = 16, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features).to(dtype)


FACTORIES = {
    "rrqr": lambda w: rrqr_factors(w, 4, 2),
    "rrqr-main": lambda w: rrqr_factors(w, 4, 0),
    "rrqr-sub": lambda w: rrqr_factors(w, 0, 2),
    "pissa": lambda w: svd_factors(w, 6, 1 / 6, minor=False),
    "milora": lambda w: svd_factors(w, 6, 1 / 6, minor=True),
    "lora": lambda w: lora_factors(w, 6),
}


@pytest.mark.parametrize("init", sorted(FACTORIES))
def test_output_equals_base_after_init(init: str) -> None:
    base = _linear()
    x = torch.randn(5, 16)
    expected = base(x).detach()
    layer = DualLoRALinear(base, FACTORIES[init](base.weight), alpha=1.0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def _trained(layer: DualLoRALinear) -> DualLoRALinear:
    with torch.no_grad():
        for p in (layer.lora_A_main, layer.lora_B_main, layer.lora_A_sub, layer.lora_B_sub):
            p.add_(torch.randn_like(p) * 0.3)
    return layer


def test_merge_unmerge_are_exact_inverses() -> None:
    base = _linear()
    layer = _trained(DualLoRALinear(base, rrqr_factors(base.weight, 4, 2)))
    x = torch.randn(5, 16)
    residual = layer.weight.detach().clone()
    unmerged_out = layer(x)
    layer.merge()
    assert not torch.equal(layer.weight, residual)
    torch.testing.assert_close(layer(x), unmerged_out, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    assert torch.equal(layer.weight, residual)
    assert torch.equal(layer(x), unmerged_out)


def test_merge_twice_and_unmerge_unmerged_are_refused() -> None:
    base = _linear()
    layer = DualLoRALinear(base, rrqr_factors(base.weight, 4, 2))
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_merge_refuses_non_finite_and_leaves_weight() -> None:
    base = _linear()
    layer = DualLoRALinear(base, rrqr_factors(base.weight, 4, 2))
    with torch.no_grad():
        layer.lora_B_main[0, 0] = float("nan")
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge()
    assert torch.equal(layer.weight, before) and not layer.merged
    with pytest.raises(ValueError, match="not finite"):
        layer.to_linear()


def test_to_linear_matches_adapted_layer() -> None:
    base = _linear()
    layer = _trained(DualLoRALinear(base, rrqr_factors(base.weight, 4, 2)))
    x = torch.randn(5, 16)
    linear = layer.to_linear()
    assert type(linear) is nn.Linear
    torch.testing.assert_close(linear(x), layer(x), rtol=1e-5, atol=1e-6)


def test_scaling_is_alpha_over_total_rank() -> None:
    base = _linear()
    pretrained = base.weight.detach().clone()
    layer = DualLoRALinear(base, rrqr_factors(base.weight, 6, 2), alpha=2.0)
    assert layer.scaling == pytest.approx(2.0 / 8)
    expected = pretrained - 0.25 * (
        layer.lora_B_main @ layer.lora_A_main + layer.lora_B_sub @ layer.lora_A_sub
    )
    torch.testing.assert_close(layer.weight.detach(), expected)


def test_bf16_base_keeps_residual_in_base_dtype() -> None:
    base = _linear(dtype=torch.bfloat16)
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    expected = base(x).detach().float()
    layer = DualLoRALinear(base, rrqr_factors(base.weight, 4, 2))
    assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    assert layer.lora_A_main.dtype == torch.float32
    out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_factor_shapes_are_checked() -> None:
    base = _linear()
    wrong = rrqr_factors(torch.randn(24, 20), 4, 2)
    with pytest.raises(ValueError, match="a_main has shape"):
        DualLoRALinear(base, wrong)


def test_gradients_reach_only_adapters() -> None:
    base = _linear()
    layer = DualLoRALinear(base, rrqr_factors(base.weight, 4, 2))
    layer(torch.randn(3, 16)).square().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    for p in (layer.lora_A_main, layer.lora_B_main, layer.lora_A_sub, layer.lora_B_sub):
        assert p.grad is not None and p.grad.abs().sum() > 0
