from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from recyclelora import AdapterConfig, adapter_param_groups, inject_adapters, merge_adapters
from recyclelora.adapters import DualLoRALinear, adapter_layers, adapter_state_dict, load_adapter_state_dict
from recyclelora.adapters.config import INIT_METHODS
from tests.helpers import tiny_vit

CONFIG = dict(rank_main=6, rank_sub=2)


def _perturb(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for p in (layer.lora_A_main, layer.lora_B_main, layer.lora_A_sub, layer.lora_B_sub):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("init", INIT_METHODS)
def test_adapted_model_equals_pretrained_after_init(vit: nn.Module, images: torch.Tensor, init: str) -> None:
    reference = vit.forward_features(images)
    inject_adapters(vit, AdapterConfig(init=init, **CONFIG))
    torch.testing.assert_close(vit.forward_features(images), reference, rtol=1e-5, atol=1e-5)
    assert len(list(adapter_layers(vit))) == 8


@pytest.mark.parametrize("init", ["rrqr", "rrqr-main", "rrqr-sub", "lora"])
def test_trainable_parameters_are_exactly_the_adapters(vit: nn.Module, init: str) -> None:
    config = AdapterConfig(init=init, **CONFIG)
    inject_adapters(vit, config)
    trainable = {n: p for n, p in vit.named_parameters() if p.requires_grad}
    assert all(n.rsplit(".", 1)[-1].startswith("lora_") for n in trainable)
    rank = sum(config.effective_ranks)
    expected = sum(rank * (layer.in_features + layer.out_features) for _, layer in adapter_layers(vit))
    assert sum(p.numel() for p in trainable.values()) == expected
    assert not vit.cls_token.requires_grad and not vit.pos_embed.requires_grad


def test_merged_model_loads_strictly_into_plain_timm(vit: nn.Module, images: torch.Tensor) -> None:
    keys = {k: v.shape for k, v in vit.state_dict().items()}
    inject_adapters(vit, AdapterConfig(**CONFIG))
    _perturb(vit)
    adapted = vit.forward_features(images)
    merged = merge_adapters(vit)
    assert not list(adapter_layers(merged))
    state = merged.state_dict()
    assert {k: v.shape for k, v in state.items()} == keys
    plain = tiny_vit()
    plain.load_state_dict(state, strict=True)
    torch.testing.assert_close(plain.forward_features(images), adapted, rtol=1e-4, atol=1e-5)


def test_block_selection_adapts_exactly_those_blocks() -> None:
    model = tiny_vit(depth=4)
    inject_adapters(model, AdapterConfig(blocks=(0, -1), **CONFIG))
    adapted = {name.split(".")[1] for name, _ in adapter_layers(model)}
    assert adapted == {"0", "3"}
    assert isinstance(model.blocks[1].attn.qkv, nn.Linear) and not isinstance(
        model.blocks[1].attn.qkv, DualLoRALinear
    )


def test_target_subset_and_unknown_target(vit: nn.Module) -> None:
    inject_adapters(vit, AdapterConfig(target_modules=("attn.qkv",), **CONFIG))
    assert [n for n, _ in adapter_layers(vit)] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no nn.Linear"):
        inject_adapters(tiny_vit(), AdapterConfig(target_modules=("qkv", "q_proj"), **CONFIG))


def test_out_of_range_block_and_rank_too_large() -> None:
    with pytest.raises(ValueError, match="block index 5 is out of range"):
        inject_adapters(tiny_vit(), AdapterConfig(blocks=(5,), **CONFIG))
    with pytest.raises(ValueError, match=r"blocks.0.attn.qkv: .*min\(out, in\) = 48"):
        inject_adapters(tiny_vit(), AdapterConfig(rank_main=40, rank_sub=10))


def test_injecting_twice_is_refused(vit: nn.Module) -> None:
    inject_adapters(vit, AdapterConfig(**CONFIG))
    with pytest.raises(ValueError, match="match no nn.Linear"):
        inject_adapters(vit, AdapterConfig(**CONFIG))


def test_param_groups_follow_the_paper(vit: nn.Module) -> None:
    config = AdapterConfig(**CONFIG)
    inject_adapters(vit, config)
    groups = {g["name"]: g for g in adapter_param_groups(vit, config, lr=1e-4)}
    assert groups["adapter_main"]["lr"] == pytest.approx(1e-4)
    assert groups["adapter_sub"]["lr"] == pytest.approx(5e-5)
    assert groups["adapter_main"]["weight_decay"] == 0.0 == groups["adapter_sub"]["weight_decay"]
    trainable = {id(p) for p in vit.parameters() if p.requires_grad and p.numel()}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)
    main_ids = {id(layer.lora_A_main) for _, layer in adapter_layers(vit)}
    assert main_ids <= {id(p) for p in groups["adapter_main"]["params"]}


def test_single_adapter_baselines_have_one_group(vit: nn.Module) -> None:
    config = AdapterConfig(init="pissa", **CONFIG)
    inject_adapters(vit, config)
    assert [g["name"] for g in adapter_param_groups(vit, config, lr=1.0)] == ["adapter_main"]


def test_adapter_state_dict_round_trip_and_mismatch(vit: nn.Module, images: torch.Tensor) -> None:
    config = AdapterConfig(**CONFIG)
    inject_adapters(vit, config)
    _perturb(vit)
    state = adapter_state_dict(vit)
    assert all(k.rsplit(".", 1)[-1] in ("lora_A_main", "lora_B_main", "lora_A_sub", "lora_B_sub") for k in state)
    expected = vit.forward_features(images)
    other = tiny_vit()
    inject_adapters(other, config)
    load_adapter_state_dict(other, state)
    torch.testing.assert_close(other.forward_features(images), expected)
    smaller = tiny_vit()
    inject_adapters(smaller, AdapterConfig(rank_main=4, rank_sub=2))
    with pytest.raises(ValueError, match="shape mismatches"):
        load_adapter_state_dict(smaller, state)


@pytest.mark.parametrize(
    "name", ["eva02_tiny_patch14_224", "vit_base_patch16_clip_224", "vit_small_patch14_reg4_dinov2"]
)
def test_other_timm_vit_families(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, depth=1, img_size=28, patch_size=14).eval()
    x = torch.randn(1, 3, 28, 28)
    reference = model.forward_features(x)
    inject_adapters(model, AdapterConfig(rank_main=4, rank_sub=2))
    assert len(list(adapter_layers(model))) == 4
    torch.testing.assert_close(model.forward_features(x), reference, rtol=1e-5, atol=1e-5)
    _perturb(model)  # the adapted forward must use every adapter, or the merged model would differ
    adapted = model.forward_features(x)
    assert not torch.allclose(adapted, reference, atol=1e-3)
    merged = merge_adapters(model).state_dict()
    plain = timm.create_model(name, pretrained=False, depth=1, img_size=28, patch_size=14).eval()
    plain.load_state_dict(merged, strict=True)
    torch.testing.assert_close(plain.forward_features(x), adapted, rtol=1e-4, atol=1e-4)


def test_not_a_vit_is_rejected() -> None:
    with pytest.raises(TypeError, match="no `blocks` sequence"):
        inject_adapters(nn.Linear(4, 4), AdapterConfig(**CONFIG))
