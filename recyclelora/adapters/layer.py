"""``DualLoRALinear``: a frozen residual linear layer plus a main and a sub low-rank adapter."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recyclelora.adapters.factors import Factors
from recyclelora.errors import InvalidInputError

ADAPTER_PARAMETERS: tuple[str, ...] = ("lora_A_main", "lora_B_main", "lora_A_sub", "lora_B_sub")


class DualLoRALinear(nn.Module):
    """``y = W_res x + b + s B_main (A_main x) + s B_sub (A_sub x)``, ``s = alpha / (r_main + r_sub)``.

    ``weight`` holds the frozen residual ``W_res = W0 - s (B_main A_main + B_sub A_sub)`` of the initial
    factors, in the base layer's dtype; the four adapter tensors (float32, trainable) keep the names of the
    published implementation so checkpoints port. A rank of 0 on either side gives an empty adapter.
    ``base`` is consumed: its weight tensor becomes the residual in place, so no second copy of the
    weights is ever held (keep a copy of ``base`` if you still need the pretrained layer).
    """

    def __init__(self, base: nn.Linear, factors: Factors, alpha: float = 1.0) -> None:
        super().__init__()
        out_features, in_features = base.weight.shape
        for name, tensor, shape in (
            ("a_main", factors.a_main, (factors.rank_main, in_features)),
            ("b_main", factors.b_main, (out_features, factors.rank_main)),
            ("a_sub", factors.a_sub, (factors.rank_sub, in_features)),
            ("b_sub", factors.b_sub, (out_features, factors.rank_sub)),
        ):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"factor {name} has shape {tuple(tensor.shape)}, expected {shape}")
        self.in_features, self.out_features = in_features, out_features
        self.rank_main, self.rank_sub = factors.rank_main, factors.rank_sub
        self.scaling = alpha / (self.rank_main + self.rank_sub)
        device = base.weight.device
        self.lora_A_main = nn.Parameter(factors.a_main.to(device, torch.float32).clone())
        self.lora_B_main = nn.Parameter(factors.b_main.to(device, torch.float32).clone())
        self.lora_A_sub = nn.Parameter(factors.a_sub.to(device, torch.float32).clone())
        self.lora_B_sub = nn.Parameter(factors.b_sub.to(device, torch.float32).clone())
        weight = base.weight.detach()
        with torch.no_grad():  # W_res = W0 - s B A, written over W0 (no second copy of the weights)
            b, a = self._stacked()
            if weight.dtype == torch.float32:
                weight.addmm_(b, a, alpha=-self.scaling)
            else:
                weight.copy_(torch.addmm(weight.float(), b, a, alpha=-self.scaling))
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach(), requires_grad=False)

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``B = [B_main | B_sub]`` (out x r) and ``A = [A_main; A_sub]`` (r x in): one product for both adapters."""
        b = torch.cat([self.lora_B_main, self.lora_B_sub], dim=1)
        a = torch.cat([self.lora_A_main, self.lora_A_sub], dim=0)
        return b, a

    def delta_weight(self) -> torch.Tensor:
        """``s (B_main A_main + B_sub A_sub)`` in float32 (out x in)."""
        b, a = self._stacked()
        return (b @ a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = F.linear(x, self.weight, self.bias)
        b, a = self._stacked()
        update = F.linear(F.linear(x.to(a.dtype), a), b)
        return result + (update * self.scaling).to(result.dtype)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing ``W_res + s (B_main A_main + B_sub A_sub)``; checks finiteness."""
        weight = self.weight.float() + self.delta_weight()
        if not torch.isfinite(weight).all():
            raise InvalidInputError("merged weight is not finite: the adapters hold NaN or Inf")
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.to(device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(weight.to(self.weight.dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank_main={self.rank_main}, "
            f"rank_sub={self.rank_sub}, scaling={self.scaling:.4g}"
        )
