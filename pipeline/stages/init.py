"""Stage ``init``: the adapters' initial factors (the cached RRQR/SVD decomposition), an output of its own.

The output folder is an init cache (:class:`recyclelora.adapters.CacheEntry`) that depends only on the
backbone file and the adapter's rank/initialiser params, so changing ``train.*`` never recomputes it; the
``train`` stage reads it through ``cache_dir``. ``init.json`` says what the folder holds: nothing for the
random ``lora`` initialiser, which is drawn from ``base.seed`` at training time.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.stages._common import open_stage, with_backbone, write_json
from pipeline.tracking import log_small_artifacts
from recyclelora.adapters import CacheEntry, find_target_linears, inject_adapters
from recyclelora.io import atomic_dir
from recyclelora.models.backbone import ViTBackbone
from recyclelora.models.config import ModelConfig

RECORD_FILE = "init.json"


def compute_init_cache(model: ModelConfig, out: Path, *, progress: bool = True) -> dict[str, object]:
    """Decompose every adapted weight of ``model``'s backbone into the cache folder ``out``."""
    config = model.adapter
    record: dict[str, object] = {"init": config.init, "ranks": list(config.effective_ranks), "file": None}
    if not config.initialiser.deterministic:
        return record | {"layers": 0, "seconds": 0.0}
    vit = ViTBackbone(model.backbone).vit
    targets = find_target_linears(vit, config)
    entry = CacheEntry.locate(out, config, {name: linear.weight for name, linear in targets.items()})
    columns = (TextColumn(f"{config.init} init"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    start = time.perf_counter()
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("init", total=len(targets))
        inject_adapters(vit, config, cache_dir=out, on_done=lambda _: bar.advance(task))
    return record | {"file": entry.path.name, "layers": len(targets), "seconds": time.perf_counter() - start}


def run_init(params_path: Path, weights: Path, out: Path, *, progress: bool = True) -> dict[str, object]:
    """The ``init`` stage: validate params, write the cache folder ``out`` atomically, log its record."""
    with open_stage("init", params_path) as params:
        model = with_backbone(params.run.model, weights)
        with atomic_dir(out) as tmp:
            record = compute_init_cache(model, tmp, progress=progress)
            # the wall time goes to MLflow only: in the folder it would change the output's hash every run
            write_json(tmp / RECORD_FILE, {k: v for k, v in record.items() if k != "seconds"})
        mlflow.log_metrics({"layers": float(record["layers"]), "seconds": float(record["seconds"])})
        log_small_artifacts([out / RECORD_FILE])
    return record
