"""A timm ViT turned into a four-level feature pyramid (strides p/4, p/2, p, 2p for patch size p)."""

from __future__ import annotations

import types
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from recyclelora.errors import InvalidInputError
from recyclelora.models.backbone_config import PYRAMID_SCALES, BackboneConfig, Pyramid
from recyclelora.models.weights import load_backbone_weights


def default_out_indices(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending at the last one: ``round(depth * k / 4) - 1`` for k = 1..4."""
    levels = len(PYRAMID_SCALES)
    if depth < levels:
        raise InvalidInputError(
            f"a {depth}-block ViT cannot feed {levels} pyramid levels by default: set out_indices."
        )
    return tuple(round(depth * k / levels) - 1 for k in range(1, levels + 1))


class Interpolate(nn.Module):
    """Parameter-free rescaling ``F.interpolate(x, scale_factor=scale, mode="bilinear")`` (identity at 1)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 1.0:
            return x
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _rescale(channels: int, scale: float, pyramid: Pyramid) -> nn.Module:
    """One pyramid level. ``interpolate``: bilinear by ``scale``. ``learned``: x4 two stride-2 transposed
    convs with LayerNorm2d + GELU between, x2 one, x1 identity, x0.5 max-pool."""
    if pyramid == "interpolate":
        return Interpolate(scale)
    if scale == 4.0:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            LayerNorm2d(channels),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if scale == 1.0:
        return nn.Identity()
    return nn.MaxPool2d(kernel_size=2, stride=2)


#: The official DINOv2's ``interpolate_offset``: its run-time grid scale is ``(n + 0.1) / grid``.
DINOV2_GRID_OFFSET = 0.1


def resample_pos_grid_dinov2(pos_embed: Tensor, grid: tuple[int, int], size: tuple[int, int], prefix: int) -> Tensor:
    """The official DINOv2's ``interpolate_pos_encoding``: the ``grid`` of position embeddings (after ``prefix``
    class/register entries, kept as they are) resized to ``size`` (rows, columns) by bicubic interpolation in
    fp32 without antialiasing, with scale factors ``(size + 0.1) / grid`` (not ``size / grid``: DINO's offset
    against floating-point error, which moves every sample point slightly). ``size == grid`` returns it as is.
    """
    if tuple(size) == tuple(grid):
        return pos_embed
    head, body = pos_embed[:, :prefix], pos_embed[:, prefix:]
    dim = body.shape[-1]
    body = body.float().reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)
    scale = tuple((n + DINOV2_GRID_OFFSET) / g for n, g in zip(size, grid))
    body = F.interpolate(body, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    if tuple(body.shape[-2:]) != tuple(size):  # floor(g * (n + 0.1) / g) is n in exact arithmetic
        raise RuntimeError(f"DINOv2 grid resampling gave {tuple(body.shape[-2:])}, expected {tuple(size)}")
    body = body.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([head, body], dim=1)


def _pos_embed_dinov2(vit: VisionTransformer, x: Tensor) -> Tensor:
    """timm's ``VisionTransformer._pos_embed`` for ``(B, H, W, C)`` patch tokens, with the position grid
    resampled by :func:`resample_pos_grid_dinov2` instead of timm's antialiased bicubic."""
    batch, height, width, channels = x.shape
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    pos = resample_pos_grid_dinov2(vit.pos_embed, vit.patch_embed.grid_size, (height, width), prefix)
    tokens = [token.expand(batch, -1, -1) for token in (vit.cls_token, vit.reg_token) if token is not None]
    x = x.reshape(batch, -1, channels)
    x = torch.cat([*tokens, x + pos], dim=1) if vit.no_embed_class else torch.cat([*tokens, x], dim=1) + pos
    return vit.pos_drop(x)


def check_model_name(name: str) -> None:
    """Refuse a ``model.backbone.name`` that timm's registry does not know (the config cannot: it imports no
    torch)."""
    if not timm.is_model(name):
        raise InvalidInputError(
            f"model.backbone.name={name!r} is not a timm model: list candidates with timm.list_models('*dinov2*')."
        )


class ViTBackbone(nn.Module):
    """``features = [neck_k(block_{i_k}(x)) for k in 0..3]``: a ViT's block outputs as a 4-level pyramid.

    The timm ``VisionTransformer`` is kept whole as ``self.vit`` (adapters are injected into it by name);
    its block outputs at ``out_indices`` (before the final norm) are reshaped to ``(B, C, H/p, W/p)`` and
    rescaled x4, x2, x1, x0.5 by ``self.neck``, giving strides p/4, p/2, p, 2p: bilinear interpolation
    without parameters (``pyramid="interpolate"``, the published backbone) or a trainable neck (``learned``).
    The position grid is resampled to the input on the fly, so any ``H, W`` that are multiples of p (and at
    least 2p) work: as the official DINOv2 does (:func:`resample_pos_grid_dinov2`) with
    ``embed_resample="bicubic"``, as timm does (antialiased) with ``"pinv"``. Other sizes are refused rather
    than padded, since padding would shift the pyramid against the image. Parameters that the pyramid does not depend on (final norm, classifier, blocks past
    the last index) are frozen so that every trainable parameter receives a gradient (DDP requires it).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        check_model_name(config.name)
        self.config = config
        kwargs: dict[str, Any] = dict(config.model_kwargs, img_size=config.img_size)
        if config.patch_size is not None:
            kwargs["patch_size"] = config.patch_size
        vit = timm.create_model(
            config.name,
            pretrained=False,
            num_classes=0,
            dynamic_img_size=True,
            drop_path_rate=config.drop_path_rate,
            **kwargs,
        )
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"{config.name!r} builds a {type(vit).__name__}; ViTBackbone needs a timm ViT.")
        if config.embed_resample == "bicubic" and vit.pos_embed is not None:
            vit._pos_embed = types.MethodType(_pos_embed_dinov2, vit)  # timm's ViT has no hook for the rule
        self.vit = vit
        depth = len(vit.blocks)
        self.out_indices = config.out_indices or default_out_indices(depth)
        if self.out_indices[-1] >= depth:
            raise InvalidInputError(f"out_indices {self.out_indices} exceed the {depth} blocks of {config.name!r}.")
        load_backbone_weights(vit, config.weights, resample=config.embed_resample)
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.neck = nn.ModuleList(_rescale(vit.embed_dim, scale, config.pyramid) for scale in PYRAMID_SCALES)
        self.out_channels: tuple[int, ...] = (vit.embed_dim,) * len(PYRAMID_SCALES)
        self.strides: tuple[float, ...] = tuple(self.patch_size / scale for scale in PYRAMID_SCALES)
        self._freeze_unused()

    def _freeze_unused(self) -> None:
        unused = [
            self.vit.norm,
            self.vit.fc_norm,
            self.vit.head,
            *self.vit.blocks[self.out_indices[-1] + 1 :],
        ]
        if self.vit.attn_pool is not None:
            unused.append(self.vit.attn_pool)
        for module in unused:
            module.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` -> 4 maps ``(B, C, H * 4/p, W * 4/p)`` ... ``(B, C, H/(2p), W/(2p))``, finest first."""
        height, width = x.shape[-2:]
        p = self.patch_size
        if height % p or width % p or height < 2 * p or width < 2 * p:
            raise InvalidInputError(
                f"input size {height}x{width} must be a multiple of the patch size {p} and at least {2 * p}: "
                f"resize or crop it, e.g. to {max(2, height // p) * p}x{max(2, width // p) * p}."
            )
        features = self.vit.forward_intermediates(
            x, indices=list(self.out_indices), output_fmt="NCHW", intermediates_only=True, stop_early=True
        )
        return [neck(feature) for neck, feature in zip(self.neck, features)]
