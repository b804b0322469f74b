"""AdamW parameter groups of the recipe and the per-step schedule applied to them."""

from __future__ import annotations

import torch

from recyclelora.adapters import adapter_param_groups
from recyclelora.models.config import ModelConfig
from recyclelora.models.heads import weight_decay_groups
from recyclelora.models.segmentor import Segmentor
from recyclelora.train.config import TrainConfig
from recyclelora.train.schedules import cosine_value, poly_factor


def _decay_split(name: str, module: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    split = weight_decay_groups(module)
    groups = [
        {"name": f"{name}_decay", "params": [p for _, p in split.decay], "lr": lr, "weight_decay": weight_decay},
        {"name": f"{name}_no_decay", "params": [p for _, p in split.no_decay], "lr": lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def param_groups(model: Segmentor, model_config: ModelConfig, config: TrainConfig) -> list[dict]:
    """Adapters (main lr x1, sub lr x0.5, no decay) or the whole backbone (``full``, lr x
    ``backbone_lr_mult``), then neck and head (lr; decay except on norms and the head's position embeddings).

    Each group remembers its starting ``base_lr`` and ``base_weight_decay`` for :func:`apply_schedules`.
    """
    groups: list[dict] = []
    if model_config.tuning == "adapters":
        groups += adapter_param_groups(model.backbone.vit, model_config.adapter, config.lr)
    elif model_config.tuning == "full":
        groups += _decay_split("backbone", model.backbone.vit, config.lr * config.backbone_lr_mult, config.weight_decay)
    groups += _decay_split("neck", model.backbone.neck, config.lr, config.weight_decay)
    groups += _decay_split("head", model.head, config.lr, config.weight_decay)
    for group in groups:
        group["base_lr"], group["base_weight_decay"] = group["lr"], group["weight_decay"]
    return groups


def apply_schedules(optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> None:
    """Poly learning rate ``base_lr (1 - step/(T-1))^power``; weight decay cosine-annealed from
    ``base_weight_decay`` to ``weight_decay_end`` in every group, as mmengine's scheduler does: a group that
    starts without decay rises from 0 to ``weight_decay_end`` (1e-5 in the recipe)."""
    factor = poly_factor(step, config.iterations, config.poly_power)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
        group["weight_decay"] = cosine_value(step, config.iterations, group["base_weight_decay"], config.weight_decay_end)


def build_optimizer(model: Segmentor, model_config: ModelConfig, config: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, model_config, config)
    grouped = {id(p) for g in groups for p in g["params"]}
    stray = [n for n, p in model.named_parameters() if p.requires_grad and p.numel() and id(p) not in grouped]
    if stray:
        raise RuntimeError(f"trainable parameters outside every optimiser group: {stray[:5]}")
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
