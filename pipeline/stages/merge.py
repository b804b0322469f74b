"""Stage ``merge``: fold the trained adapters into the backbone, giving a plain timm ViT + head checkpoint.

``W = W_res + s (B_main A_main + B_sub A_sub)``: the merged model has the pretrained model's latency and needs
no backbone weights to load. Frozen and fully fine-tuned models have no adapters and are written as they are.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow

from pipeline.stages._common import open_stage
from recyclelora.models.merge import merge_checkpoint


def run_merge(params_path: Path, checkpoint: Path, out: Path) -> Path:
    """The ``merge`` stage: write the merged checkpoint ``out`` atomically, once its logits are checked against
    the unmerged model's (:func:`~recyclelora.models.merge.merge_checkpoint`), and log the check, time and size
    to MLflow.

    The merged file holds the whole backbone (hundreds of MB for large ViTs): it stays in DVC only.
    """
    with open_stage("merge", params_path):
        start = time.perf_counter()
        result = merge_checkpoint(checkpoint, out)
        mlflow.log_metrics(
            {
                "seconds": time.perf_counter() - start,
                "size_mb": out.stat().st_size / 2**20,
                "relative_logit_diff": result.relative_diff,
            }
        )
    return out
