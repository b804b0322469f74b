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


def _set_adapters(layer: DualLoRALinear, seed: int = 1) -> dict[str, torch.Tensor]:
    """Overwrite the four adapter tensors with values the test owns (as training would) and return them."""
    generator = torch.Generator().manual_seed(seed)
    values = {}
    with torch.no_grad():
        for name in ("lora_A_main", "lora_B_main", "lora_A_sub", "lora_B_sub"):
            param = getattr(layer, name)
            values[name] = torch.randn(param.shape, generator=generator)
            param.copy_(values[name])
    return values


def test_residual_is_pretrained_minus_scaled_initial_product() -> None:
    """W_res = W0 - s (B0_main A0_main + B0_sub A0_sub), s = alpha / (r_main + r_sub), from the factors."""
    base = _linear()
    pretrained = base.weight.detach().clone()
    factors = rrqr_factors(pretrained, 6, 2)
    layer = DualLoRALinear(base, factors, alpha=2.0)
    assert layer.scaling == pytest.approx(2.0 / 8)
    expected = pretrained - 0.25 * (factors.b_main @ factors.a_main + factors.b_sub @ factors.a_sub)
    torch.testing.assert_close(layer.weight.detach(), expected)


def test_forward_and_to_linear_use_trained_adapters() -> None:
    """After training moves the adapters to (A, B): y = (W0 + s (B A - B0 A0)) x + b, both through the
    adapted layer and through its plain nn.Linear."""
    base = _linear()
    pretrained, bias = base.weight.detach().clone(), base.bias.detach().clone()
    factors = rrqr_factors(pretrained, 4, 2)
    layer = DualLoRALinear(base, factors, alpha=3.0)
    trained = _set_adapters(layer)
    s = 3.0 / 6
    initial = factors.b_main @ factors.a_main + factors.b_sub @ factors.a_sub
    now = trained["lora_B_main"] @ trained["lora_A_main"] + trained["lora_B_sub"] @ trained["lora_A_sub"]
    weight = pretrained + s * (now - initial)
    x = torch.randn(5, 16)
    expected = x @ weight.T + bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    linear = layer.to_linear()
    assert type(linear) is nn.Linear
    torch.testing.assert_close(linear.weight.detach(), weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(linear(x), expected, rtol=1e-5, atol=1e-5)


def test_to_linear_refuses_non_finite_adapters() -> None:
    base = _linear()
    layer = DualLoRALinear(base, rrqr_factors(base.weight, 4, 2))
    with torch.no_grad():
        layer.lora_B_main[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        layer.to_linear()


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
