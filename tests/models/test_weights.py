"""Loading checkpoints into a timm ViT: official DINOv2, timm and Hugging Face layouts, and refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from recyclelora.models.backbone import BackboneConfig, ViTBackbone
from recyclelora.models.sources import NAMED_SOURCES, WEIGHT_SOURCES, check_source
from recyclelora.models.weights import (
    LOADERS,
    check_state_dict_fits,
    hf_dinov2_to_timm,
    load_backbone_weights,
    read_checkpoint,
)
from tests.models.conftest import random_vit, timm_to_hf, tiny_config


def _assert_same_weights(
    loaded: torch.nn.Module, source: torch.nn.Module, skip: tuple[str, ...] = ()
) -> None:
    expected = source.state_dict()
    for name, tensor in loaded.state_dict().items():
        if name not in skip:
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_official_dinov2_pth_loads_with_grid_resampled(tmp_path) -> None:
    source = random_vit(img_size=518)
    official = {**source.state_dict(), "mask_token": torch.zeros(1, 32)}
    assert official["pos_embed"].shape == (1, 1 + 37 * 37, 32)
    path = tmp_path / "dinov2_vittiny14_pretrain.pth"
    torch.save(official, path)
    backbone = ViTBackbone(tiny_config(weights=str(path), img_size=56))
    _assert_same_weights(backbone.vit, source, skip=("pos_embed",))
    expected_pos = resample_abs_pos_embed(
        source.pos_embed.detach(), new_size=[4, 4], num_prefix_tokens=1, antialias=False
    )
    torch.testing.assert_close(backbone.vit.pos_embed, expected_pos)
    torch.testing.assert_close(backbone.vit.pos_embed[:, 0], source.pos_embed[:, 0])


def test_timm_safetensors_loads_and_reproduces_the_model(tmp_path) -> None:
    source = random_vit()
    path = tmp_path / "timm.safetensors"
    save_file(source.state_dict(), path)
    target = random_vit(seed=1, dynamic_img_size=True)
    load_backbone_weights(target, path)
    _assert_same_weights(target, source)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(target.forward_features(x), source.forward_features(x))


@pytest.mark.parametrize("prefix", ["", "dinov2."])
def test_hugging_face_layout_is_converted(tmp_path, prefix: str) -> None:
    source = random_vit()
    hf_state = timm_to_hf(source.state_dict(), prefix=prefix)
    hf_state[f"{prefix}embeddings.mask_token"] = torch.zeros(1, 32)
    path = tmp_path / "model.safetensors"
    save_file(hf_state, path)
    target = random_vit(seed=1)
    load_backbone_weights(target, path)
    _assert_same_weights(target, source)


def test_hf_qkv_is_stacked_in_query_key_value_order() -> None:
    parts = {p: torch.full((2, 2), float(i)) for i, p in enumerate(("query", "key", "value"))}
    state = {f"encoder.layer.0.attention.attention.{p}.weight": t for p, t in reversed(parts.items())}
    qkv = hf_dinov2_to_timm(state)["blocks.0.attn.qkv.weight"]
    assert qkv[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match=r"block 0 has \['key', 'query'\] weight tensors"):
        hf_dinov2_to_timm({k: v for k, v in state.items() if "value" not in k})


def test_mismatched_checkpoint_lists_missing_unexpected_and_shapes(tmp_path) -> None:
    path = tmp_path / "other.safetensors"
    save_file(random_vit(embed_dim=48, depth=2, num_heads=2).state_dict(), path)
    target = random_vit()
    before = {name: t.clone() for name, t in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_backbone_weights(target, path)
    message = str(info.value)
    assert "missing keys (28): blocks.2.attn.proj.bias; blocks.2.attn.proj.weight;" in message
    assert "shape mismatches (34): blocks.0.attn.proj.bias: expected (32,), got (48,);" in message
    assert "embed_dim=48, depth=2, patch=14" in message
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} changed although loading was refused"

    extra = {**random_vit().state_dict(), "head.weight": torch.zeros(3, 32)}
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): head.weight"):
        check_state_dict_fits(target, extra, "extra.pth")


def test_mismatch_names_the_probable_dinov2_model() -> None:
    state = {
        "patch_embed.proj.weight": torch.zeros(1024, 3, 14, 14),
        "blocks.23.norm1.weight": torch.zeros(1),
    }
    with pytest.raises(ValueError, match="probably 'vit_large_patch14_dinov2'"):
        check_state_dict_fits(random_vit(), state, "large.pth")
    state["reg_token"] = torch.zeros(1, 4, 1024)
    with pytest.raises(ValueError, match="probably 'vit_large_patch14_reg4_dinov2'"):
        check_state_dict_fits(random_vit(), state, "large_reg.pth")


class _Payload:
    """Unpickling this would create ``marker``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_without_running_them(tmp_path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"pos_embed": torch.zeros(1), "payload": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_bad_sources_are_explained(tmp_path) -> None:
    with pytest.raises(ValueError, match="ending in .pth, .pt, .safetensors"):
        check_source("weights.bin")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pth")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(TypeError, match="holds a list, expected a dict"):
        read_checkpoint(path)


def test_every_named_source_is_accepted_and_other_words_are_refused_listing_them() -> None:
    assert NAMED_SOURCES == tuple(WEIGHT_SOURCES) and {"embedded", "hub", "none"} <= set(WEIGHT_SOURCES)
    for name in WEIGHT_SOURCES:
        check_source(name)
    with pytest.raises(ValueError, match=r"weights='imagenet' is neither one of \(.*\) nor a") as error:
        check_source("imagenet")
    assert all(repr(name) in str(error.value) for name in WEIGHT_SOURCES)
    help = BackboneConfig.__dataclass_fields__["weights"].metadata["help"]
    assert all(f"'{name}' (" in help for name in WEIGHT_SOURCES)


def test_the_backbone_loads_a_named_source_through_its_loader(monkeypatch) -> None:
    assert set(LOADERS) == set(WEIGHT_SOURCES)
    calls = []
    monkeypatch.setitem(LOADERS, "hub", lambda *args: calls.append(args))
    backbone = ViTBackbone(tiny_config(weights="hub", embed_resample="pinv"))
    assert calls == [(backbone.vit, "pinv")]


def test_none_keeps_the_random_init() -> None:
    vit, same = random_vit(), random_vit()
    load_backbone_weights(vit, "none")
    _assert_same_weights(vit, same)


def test_a_source_made_for_one_model_refuses_the_others() -> None:
    bound = [source for source in WEIGHT_SOURCES.values() if source.model is not None]
    assert [source.name for source in bound] == ["embedded"]
    for source in bound:
        with pytest.raises(ValueError, match=rf"weights='{source.name}' .* needs name='{source.model}'"):
            tiny_config(weights=source.name, name="vit_base_patch14_dinov2")
