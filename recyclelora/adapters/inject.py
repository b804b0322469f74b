"""Attach dual adapters to a timm ViT in place, fold them back out, and build optimiser groups."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from recyclelora.adapters.cache import CacheEntry
from recyclelora.adapters.config import AdapterConfig
from recyclelora.adapters.factors import Factors, check_ranks
from recyclelora.adapters.init import compute_factors
from recyclelora.adapters.layer import ADAPTER_PARAMETERS, DualLoRALinear
from recyclelora.errors import InvalidInputError


def _blocks(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise TypeError(
            f"{type(model).__name__} has no `blocks` sequence: pass a timm VisionTransformer or Eva model "
            "(for a ViTBackbone, pass its `.vit`)"
        )
    return blocks


def _selected_blocks(model: nn.Module, config: AdapterConfig) -> list[int]:
    depth = len(_blocks(model))
    if config.blocks is None:
        return list(range(depth))
    selected = []
    for index in config.blocks:
        if not -depth <= index < depth:
            raise InvalidInputError(f"block index {index} is out of range for a model with {depth} blocks")
        selected.append(index % depth)
    return sorted(set(selected))


def find_target_linears(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Linear]:
    """Full names of the ``nn.Linear`` layers ``config`` adapts, in model order.

    A target matches a linear layer inside a selected block whose name, relative to the block, equals it
    or ends with ``"." + target`` (``"qkv"`` matches ``"attn.qkv"``). A target matching nothing raises.
    """
    blocks = _blocks(model)
    found: dict[str, nn.Linear] = {}
    used: set[str] = set()
    for index in _selected_blocks(model, config):
        for name, module in blocks[index].named_modules():
            hit = [t for t in config.target_modules if name == t or name.endswith("." + t)]
            if hit and isinstance(module, nn.Linear):
                found[f"blocks.{index}.{name}"] = module
                used.update(hit)
    missing = [t for t in config.target_modules if t not in used]
    if missing:
        linears = sorted({n for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)})
        raise InvalidInputError(f"target_modules {missing} match no nn.Linear in the blocks; a block has {linears}")
    return found


def inject_adapters(
    model: nn.Module,
    config: AdapterConfig,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    generator: torch.Generator | None = None,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, Factors]:
    """Replace the targeted linears of ``model`` by :class:`DualLoRALinear` and freeze everything else.

    Returns the initial factors by layer name (save them with a checkpoint: a decomposition is never
    recomputed on load). Deterministic initialisers are read from / written to ``cache_dir`` when given.
    """
    targets = find_target_linears(model, config)
    for name, linear in targets.items():
        try:
            check_ranks(tuple(linear.weight.shape), *config.effective_ranks)
        except ValueError as error:
            raise InvalidInputError(f"{name}: {error}") from None
    weights = {name: linear.weight for name, linear in targets.items()}
    factors = None
    entry = None
    if cache_dir is not None and config.initialiser.deterministic:
        entry = CacheEntry.locate(cache_dir, config, weights)
        factors = entry.load()
        if factors is not None and on_done is not None:
            for name in factors:
                on_done(name)
    if factors is None:
        factors = compute_factors(weights, config, workers=workers, generator=generator, on_done=on_done)
        if entry is not None:
            entry.save(factors)
    apply_factors(model, factors, config.alpha)
    return factors


def apply_factors(model: nn.Module, factors: dict[str, Factors], alpha: float) -> None:
    """Swap each named linear for a ``DualLoRALinear`` holding ``factors[name]``; freeze the rest."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, layer_factors in factors.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name} is a {type(base).__name__}, not an nn.Linear: adapters already injected?")
        setattr(parent, child, DualLoRALinear(base, layer_factors, alpha))
        if child == "qkv" and hasattr(parent, "qkv_bias_separate"):
            # timm's EvaAttention otherwise calls F.linear on `qkv.weight` directly, bypassing the adapters;
            # adding the q/k/v bias after `qkv(x)` instead is the same function.
            parent.qkv_bias_separate = True


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, DualLoRALinear]]:
    """``(name, layer)`` for every dual adapter layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, DualLoRALinear):
            yield name, module


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every ``DualLoRALinear`` by the plain ``nn.Linear`` it computes, in place.

    The result's state dict has exactly the keys and shapes of the original timm model.
    """
    for name, layer in list(adapter_layers(model)):
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.to_linear())
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable adapter tensors only, under their full names (``...qkv.lora_A_main``)."""
    return {
        f"{name}.{param}": getattr(layer, param).detach().clone()
        for name, layer in adapter_layers(model)
        for param in ADAPTER_PARAMETERS
    }


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors saved by :func:`adapter_state_dict`; keys and shapes must match exactly."""
    expected = {
        f"{name}.{param}": getattr(layer, param) for name, layer in adapter_layers(model) for param in ADAPTER_PARAMETERS
    }
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if expected[k].shape != state[k].shape
    ]
    if missing or unexpected or wrong:
        raise InvalidInputError(
            "adapter checkpoint does not fit this model (were the ranks, targets or blocks changed?): "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, shape mismatches {wrong[:8]}"
        )
    with torch.no_grad():
        for key, tensor in state.items():
            expected[key].copy_(tensor)


def adapter_param_groups(model: nn.Module, config: AdapterConfig, lr: float) -> list[dict]:
    """The paper's optimiser groups: main adapters at ``lr * lr_mult_main``, sub at ``lr * lr_mult_sub``.

    Both without weight decay by default (``config.weight_decay``). Empty groups are left out.
    """
    main: list[nn.Parameter] = []
    sub: list[nn.Parameter] = []
    for _, layer in adapter_layers(model):
        main += [p for p in (layer.lora_A_main, layer.lora_B_main) if p.numel()]
        sub += [p for p in (layer.lora_A_sub, layer.lora_B_sub) if p.numel()]
    groups = [
        {"name": "adapter_main", "params": main, "lr": lr * config.lr_mult_main, "weight_decay": config.weight_decay},
        {"name": "adapter_sub", "params": sub, "lr": lr * config.lr_mult_sub, "weight_decay": config.weight_decay},
    ]
    return [group for group in groups if group["params"]]
