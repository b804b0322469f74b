"""Pretrained weights for a timm ViT: the embedded DINOv2-S/14, timm's hub, or a local checkpoint file.

Every source is renamed to timm's layout and passed through timm's ``checkpoint_filter_fn``, which sniffs the
official DINOv2 layout (drops ``mask_token``) and resizes the patch kernel and the position grid (class token
kept) to the model's patch size and image size, in one of two ways (:data:`EmbedResample`):

- ``bicubic``, the published conversion (Rein's ``convert_dinov2``, used by RecycleLoRA): the kernel is
  resized as an image, ``F.interpolate(w, (p, p), mode="bicubic")`` with no rescaling (a 14 -> 16 kernel's sum
  grows about (16/14)^2 = 1.31x), and the grid bicubic without antialias;
- ``pinv``, timm's own: the FlexiViT pseudo-inverse kernel resampling (patch responses preserved) and an
  antialiased grid resize.

Only safetensors or ``torch.load(..., weights_only=True)`` read files: nothing is unpickled.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models import load_pretrained
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

from recyclelora.errors import InvalidInputError
from recyclelora.models.sources import WEIGHT_SOURCES, EmbedResample, check_source

logger = logging.getLogger(__name__)


#: The DINOv2 family by (embed_dim, depth), for telling the user which model a checkpoint belongs to.
_DINOV2_BY_SHAPE: dict[tuple[int, int], str] = {
    (384, 12): "vit_small_patch14_dinov2",
    (768, 12): "vit_base_patch14_dinov2",
    (1024, 24): "vit_large_patch14_dinov2",
    (1536, 40): "vit_giant_patch14_dinov2",
}

#: Hugging Face ``Dinov2Model`` (checkpoint layout of transformers 4.x and of the hub's files) -> timm names.
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
    (r"^layernorm\.", "norm."),
)
_HF_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")
_HF_MARKER = "embeddings.patch_embeddings.projection.weight"


def _load_embedded(vit: VisionTransformer, resample: EmbedResample) -> None:
    from recyclelora.models.embedded import embedded_dinov2_small

    load_checkpoint_file(vit, embedded_dinov2_small(), resample)


def _load_hub(vit: VisionTransformer, resample: EmbedResample) -> None:
    filter_fn = functools.partial(filter_checkpoint, resample=resample)
    load_pretrained(vit, num_classes=vit.num_classes, filter_fn=filter_fn, strict=True)


def _load_nothing(vit: VisionTransformer, resample: EmbedResample) -> None:
    """Keep the ViT's random initialisation."""


#: How each of :data:`~recyclelora.models.sources.WEIGHT_SOURCES` loads into a ViT in place, its patch kernel and
#: position grid resized as the mode says.
LOADERS: dict[str, Callable[[VisionTransformer, EmbedResample], None]] = {
    "embedded": _load_embedded, "hub": _load_hub, "none": _load_nothing,
}  # fmt: skip


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``.pth``/``.pt`` file read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: check the path given as weights.")
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InvalidInputError(
            f"{path} holds Python objects besides tensors, and loading it would run arbitrary code, so it is "
            "refused. Re-save the weights alone: torch.save(model.state_dict(), path) or as .safetensors."
        ) from err
    if not isinstance(checkpoint, dict):
        raise TypeError(
            f"{path} holds a {type(checkpoint).__name__}, expected a dict of tensors (a state dict)."
        )
    return checkpoint


def hf_dinov2_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``Dinov2Model`` state dict to timm's ViT names.

    ``query``, ``key`` and ``value`` are stacked in that order into timm's fused ``attn.qkv``;
    ``mask_token`` is dropped (timm's ViT has none); names that do not match are kept as they are.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, tensor in state.items():
        if name == "embeddings.mask_token":
            continue
        if match := _HF_QKV.match(name):
            block, part, kind = match.groups()
            qkv.setdefault((block, kind), {})[part] = tensor
            continue
        for pattern, replacement in _HF_RENAMES:
            name, count = re.subn(pattern, replacement, name)
            if count:
                break
        out[name] = tensor
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise InvalidInputError(
                f"block {block} has {sorted(parts)} {kind} tensors, expected query, key and value."
            )
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _to_timm_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip a Hugging Face checkpoint's model prefix (``dinov2.``, ``backbone.``) and rename it; else as is."""
    prefix = next((name[: -len(_HF_MARKER)] for name in state if name.endswith(_HF_MARKER)), None)
    if prefix is None:
        return state
    return hf_dinov2_to_timm({name[len(prefix) :]: t for name, t in state.items() if name.startswith(prefix)})


def _describe(state: dict[str, Tensor]) -> str:
    """Which model a timm-layout state dict probably belongs to, from its width, depth and patch size."""
    patch = state.get("patch_embed.proj.weight")
    blocks = {int(m.group(1)) for name in state if (m := re.match(r"blocks\.(\d+)\.", name))}
    if patch is None or patch.ndim != 4 or not blocks:
        return "it does not look like a timm/DINOv2 ViT checkpoint"
    width, depth, kernel = patch.shape[0], max(blocks) + 1, patch.shape[-1]
    shape = f"embed_dim={width}, depth={depth}, patch={kernel}"
    name = _DINOV2_BY_SHAPE.get((width, depth))
    if name is None:
        return f"it holds a ViT with {shape}"
    if "reg_token" in state:
        name = name.replace("_dinov2", f"_reg{state['reg_token'].shape[1]}_dinov2")
    return f"it holds a ViT with {shape}, probably {name!r}: build the backbone with that name"


def check_state_dict_fits(vit: VisionTransformer, state: dict[str, Tensor], source: str) -> None:
    """Raise a ValueError listing missing keys, unexpected keys and shape mismatches, if there are any."""
    expected = vit.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{name}: expected {tuple(expected[name].shape)}, got {tuple(state[name].shape)}"
        for name in sorted(expected.keys() & state.keys())
        if expected[name].shape != state[name].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"weights {source} do not fit the model (embed_dim={vit.embed_dim}, depth={len(vit.blocks)}):"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            shown = "; ".join(items[:8]) + (f"; ... ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  {title} ({len(items)}): {shown}")
    lines.append(f"  {_describe(state)}.")
    raise InvalidInputError("\n".join(lines))


def bicubic_patch_kernel(state: dict[str, Tensor], vit: VisionTransformer) -> dict[str, Tensor]:
    """``state`` with its patch kernel resized to ``vit``'s as an image: ``F.interpolate(w, (p, p), "bicubic")``.

    No rescaling follows (the published conversion), so a 14 -> 16 kernel answers a patch about 1.31x more
    strongly than the original did. A kernel that already fits is left alone.
    """
    kernel = state.get("patch_embed.proj.weight")
    size = tuple(vit.patch_embed.proj.weight.shape[-2:])
    if kernel is None or kernel.ndim != 4 or tuple(kernel.shape[-2:]) == size:
        return state
    resized = F.interpolate(kernel.float(), size=size, mode="bicubic", align_corners=False).to(kernel.dtype)
    return state | {"patch_embed.proj.weight": resized}


def filter_checkpoint(
    state: dict[str, Tensor], vit: VisionTransformer, resample: EmbedResample = "bicubic"
) -> dict[str, Tensor]:
    """A timm-layout ``state`` converted by ``checkpoint_filter_fn``, resized as ``resample`` says."""
    if resample == "bicubic":
        return checkpoint_filter_fn(bicubic_patch_kernel(state, vit), vit, antialias=False)
    return checkpoint_filter_fn(state, vit)


def load_backbone_weights(
    vit: VisionTransformer, source: str | Path, *, resample: EmbedResample = "bicubic"
) -> None:
    """Load pretrained weights into ``vit`` in place, resized to its patch and image size as ``resample`` says.

    ``source`` names an entry of :data:`WEIGHT_SOURCES` or is a ``.pth``/``.pt``/``.safetensors`` file in
    timm's, the official DINOv2 or the Hugging Face Dinov2 layout.
    """
    check_source(source)
    if isinstance(source, str) and source in WEIGHT_SOURCES:
        LOADERS[source](vit, resample)
    else:
        load_checkpoint_file(vit, source, resample)


def load_checkpoint_file(
    vit: VisionTransformer, path: str | Path, resample: EmbedResample = "bicubic"
) -> None:
    """Load a checkpoint file into ``vit`` in place (see :func:`load_backbone_weights`); a missing key, an
    unexpected key or a shape that does not fit raises a ValueError saying which model the file holds."""
    state = filter_checkpoint(_to_timm_layout(read_checkpoint(path)), vit, resample)
    check_state_dict_fits(vit, state, str(path))
    vit.load_state_dict(state, strict=True)
    logger.info("loaded backbone weights from %s", path)
