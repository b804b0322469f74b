from __future__ import annotations

import pytest
import torch

from recyclelora.adapters import adapter_layers
from recyclelora.models import build_segmentor
from recyclelora.train.optim import apply_schedules, build_optimizer
from tests.helpers import tiny_model_config, tiny_train_config


def _groups(tuning: str) -> tuple[torch.nn.Module, dict[str, dict]]:
    config = tiny_model_config(tuning=tuning)
    model = build_segmentor(config).model
    optimizer = build_optimizer(model, config, tiny_train_config(lr=1e-4, weight_decay=0.05))
    return model, {g["name"]: g for g in optimizer.param_groups}


def test_adapter_groups_follow_the_recipe() -> None:
    model, groups = _groups("adapters")
    assert groups["adapter_main"]["lr"] == pytest.approx(1e-4) and groups["adapter_main"]["weight_decay"] == 0
    assert groups["adapter_sub"]["lr"] == pytest.approx(5e-5) and groups["adapter_sub"]["weight_decay"] == 0
    assert groups["head_decay"]["weight_decay"] == 0.05 and groups["head_no_decay"]["weight_decay"] == 0
    main = {id(layer.lora_A_main) for _, layer in adapter_layers(model)}
    assert main == {id(p) for p in groups["adapter_main"]["params"] if p.shape[0] == 4 and p.ndim == 2} & main
    trainable = [p for p in model.parameters() if p.requires_grad and p.numel()]
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}


def test_frozen_and_full_tuning_groups() -> None:
    model, groups = _groups("frozen")
    assert not any(name.startswith(("adapter", "backbone")) for name in groups)
    assert not any(p.requires_grad for p in model.backbone.vit.parameters())
    model, groups = _groups("full")
    assert groups["backbone_decay"]["lr"] == pytest.approx(1e-5)
    assert {id(p) for p in groups["backbone_decay"]["params"] + groups["backbone_no_decay"]["params"]} == {
        id(p) for p in model.backbone.vit.parameters() if p.requires_grad
    }


def test_schedules_move_lr_and_decay() -> None:
    config = tiny_model_config()
    model = build_segmentor(config).model
    train_config = tiny_train_config(iterations=10, lr=1e-3, weight_decay=0.05, weight_decay_end=1e-5)
    optimizer = build_optimizer(model, config, train_config)
    apply_schedules(optimizer, 5, train_config)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["adapter_sub"]["lr"] == pytest.approx(5e-4 * (1 - 5 / 9) ** 0.9)
    assert groups["adapter_main"]["weight_decay"] == pytest.approx(1e-5 / 2)  # 0 -> 1e-5, as mmengine's
    assert groups["head_decay"]["weight_decay"] == pytest.approx((0.05 + 1e-5) / 2)
