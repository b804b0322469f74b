"""Self-describing segmentor checkpoints in safetensors: config, trained tensors, initial factors.

A training checkpoint holds what training changed (adapters, or the whole backbone under ``full``; neck;
head) plus the adapters' initial factors, so the residual ``W0 - s B0 A0`` is rebuilt from the pretrained
weights without recomputing any decomposition. The pretrained backbone is identified by the SHA-256 of its
state dict, checked on load. A merged checkpoint holds every tensor of a plain timm backbone and the head;
so does one of a randomly initialised backbone (``weights="none"``), which no source could rebuild.
Every file records a digest of its tensors (``tensors_xxh3_128``), verified whenever it is read, so bytes
changed on disk or in transfer are an error instead of a silently wrong weight.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import xxhash
from safetensors import SafetensorError, safe_open

from recyclelora.adapters import Factors
from recyclelora.data.classes import ClassSet, classes_of_count
from recyclelora.errors import InvalidInputError
from recyclelora.io import save_safetensors
from recyclelora.models.build import build_segmentor
from recyclelora.models.config import ModelConfig
from recyclelora.models.segmentor import Segmentor
from recyclelora.models.sources import NAMED_SOURCES

FORMAT = "recyclelora-segmentor"
VERSION = 1
_INIT = "init."
_FIELDS = ("a_main", "b_main", "a_sub", "b_sub")
DIGEST_KEY = "tensors_xxh3_128"
CLASSES_KEY = "classes"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file says about itself."""

    config: ModelConfig
    merged: bool
    backbone_sha256: str
    metadata: dict[str, str]

    @property
    def classes(self) -> ClassSet:
        """The classes the model predicts, as recorded at training; a file without the record (written before
        class sets) has the 19 Cityscapes classes, or numbered ones when its head has another count."""
        if CLASSES_KEY in self.metadata:
            return ClassSet.from_json(self.metadata[CLASSES_KEY])
        return classes_of_count(self.config.head.num_classes or 0)


def _saved_keys(model: Segmentor, everything: bool) -> list[str]:
    if everything:
        return list(model.state_dict())
    trained_vit = {f"backbone.vit.{n}" for n, p in model.backbone.vit.named_parameters() if p.requires_grad}
    return [k for k in model.state_dict() if not k.startswith("backbone.vit.") or k in trained_vit]


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """XXH3-128 over every tensor in key order: its name, dtype, shape and raw bytes.

    A fast non-cryptographic digest (about 0.15 s per GB on one core): it detects corruption, not tampering.
    """
    digest = xxhash.xxh3_128()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of checkpoint ``path``, verified against the digest in its header (files written before
    digests were recorded have none and load unchecked)."""
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        expected = (handle.metadata() or {}).get(DIGEST_KEY)
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if expected is not None and tensor_digest(tensors) != expected:
        raise InvalidInputError(
            f"{path} is corrupt: its tensors no longer match the digest recorded when it was written (bytes "
            "changed on disk or in transfer): restore it from where it came from (dvc pull, a copy) or retrain"
        )
    return tensors


def save_segmentor(
    path: str | Path,
    model: Segmentor,
    config: ModelConfig,
    *,
    backbone_sha256: str,
    init_factors: dict[str, Factors] | None = None,
    merged: bool = False,
    classes: ClassSet | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the checkpoint atomically; ``classes`` records the class set the head predicts (its count must be
    the head's); ``metadata`` adds string entries (e.g. step, source hash).

    The header records ``model.trainable_parameters()`` as ``trainable_parameters`` (JSON), unless
    ``metadata`` gives it (a merged model has no trainable adapters left to count).
    """
    if classes is not None and len(classes) != config.head.num_classes:
        raise ValueError(f"{len(classes)} classes given for a head of {config.head.num_classes}")
    state = model.state_dict()
    everything = merged or config.backbone.weights == "none"  # a random backbone cannot be rebuilt: keep it
    tensors = {k: state[k].detach().to("cpu").contiguous() for k in _saved_keys(model, everything)}
    for layer, factors in (init_factors or {}).items():
        for field in _FIELDS:
            tensors[f"{_INIT}{layer}.{field}"] = getattr(factors, field).detach().to("cpu").contiguous()
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "model_config": json.dumps(config.to_dict()),
        "merged": json.dumps(merged),
        "backbone_sha256": backbone_sha256,
        "trainable_parameters": json.dumps(model.trainable_parameters()),
        **({} if classes is None else {CLASSES_KEY: classes.to_json()}),
        **(metadata or {}),
        DIGEST_KEY: tensor_digest(tensors),
    }
    return save_safetensors(tensors, path, header)


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read and check a checkpoint's header; raises a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train a model or give the right path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise InvalidInputError(f"{path} is not a readable safetensors checkpoint ({error})") from None
    if metadata.get("format") != FORMAT:
        raise InvalidInputError(f"{path} is not a recyclelora segmentor checkpoint (format {metadata.get('format')!r})")
    if metadata.get("version") != str(VERSION):
        raise InvalidInputError(
            f"{path} has checkpoint version {metadata.get('version')}, this recyclelora reads version {VERSION}: "
            "use the recyclelora release that wrote it"
        )
    return CheckpointInfo(
        config=ModelConfig.from_dict(json.loads(metadata["model_config"])),
        merged=json.loads(metadata["merged"]),
        backbone_sha256=metadata["backbone_sha256"],
        metadata=metadata,
    )


def _load_checkpoint(path: str | Path, *, backbone_weights: str | None = None) -> Segmentor:
    """:meth:`Segmentor.from_checkpoint` (the public way to load): the model, with the file's
    :class:`CheckpointInfo` as ``checkpoint_info`` and its initial adapter factors as ``init_factors``.

    ``backbone_weights`` overrides where the pretrained backbone comes from (e.g. a local file on another
    machine); its hash must equal the one recorded at training time. Merged checkpoints need no weights.
    """
    info = read_checkpoint_info(path)
    tensors = read_tensors(path)
    config = info.config
    if info.merged:
        config = replace(config, backbone=replace(config.backbone, weights="none"), tuning="full")
    elif backbone_weights is not None:
        config = replace(config, backbone=replace(config.backbone, weights=backbone_weights))
    elif config.backbone.weights not in NAMED_SOURCES and not Path(config.backbone.weights).is_file():
        where = "" if Path(config.backbone.weights).is_absolute() else " (relative to the folder training ran in)"
        raise FileNotFoundError(
            f"checkpoint {path} needs the pretrained backbone it was trained from, {config.backbone.weights}{where}, "
            "which is not here: pass that file with --backbone-weights (backbone_weights=...), or use a merged model"
        )
    factors = _init_factors(tensors) or None
    if not info.merged and config.tuning == "adapters" and factors is None:
        raise InvalidInputError(f"{path} has no initial adapter factors: it was not written by save_segmentor")
    everything = info.merged or config.backbone.weights == "none"
    built = build_segmentor(config, init_factors=None if info.merged else factors)
    if not everything and built.backbone_sha256 != info.backbone_sha256:
        raise InvalidInputError(
            f"checkpoint {path} was trained on backbone weights with SHA-256 {info.backbone_sha256[:16]}..., "
            f"but {config.backbone.weights!r} gives {built.backbone_sha256[:16]}...: pass the pretrained weights "
            "it was trained from (backbone_weights=...)"
        )
    model = built.model
    state = {k: v for k, v in tensors.items() if not k.startswith(_INIT)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = set(model.state_dict()) - set(_saved_keys(model, everything))
    missing = sorted(set(missing) - allowed_missing)
    if missing or unexpected:
        raise InvalidInputError(
            f"checkpoint {path} does not fit the model its config builds: missing {missing[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}"
        )
    model.checkpoint_info = info
    model.init_factors = factors
    return model


def _init_factors(tensors: dict[str, torch.Tensor]) -> dict[str, Factors]:
    layers = sorted({k[len(_INIT) :].rsplit(".", 1)[0] for k in tensors if k.startswith(_INIT)})
    return {layer: Factors(*(tensors[f"{_INIT}{layer}.{f}"] for f in _FIELDS)) for layer in layers}
