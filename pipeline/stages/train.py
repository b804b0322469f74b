"""Stage ``train``: train the segmentor of ``params.yaml`` on the prepared data, from the cached init.

The run folder (model, checkpoints, ``train_log.csv``, ``train_summary.json``, and ``train_samples.parquet``:
the manifest, row, name and image of every sample trained on) is built in ``<out>.partial`` and renamed to
``out`` when training ends. A crashed run leaves the partial folder with its checkpoints and a run key
(SHA-256 of the params read, the backbone file and the training manifests), and so does a stopped one (a stop
signal checkpoints the step in progress, a full disk keeps the checkpoint before); a rerun with the same key
resumes from the latest checkpoint, any other rerun starts afresh. Every logged row goes to MLflow at its step; the
summary, plus the last validation, is the DVC metric file.

Several processes (``RECYCLELORA_NPROC_PER_NODE``, on each node of a SLURM job: :mod:`recyclelora.train.launch`)
train as one DDP run: :func:`launch` restarts the stage's command under torchrun, rank 0 is the stage (MLflow, the
run folder, its key and the metrics) and the other ranks train into the same partial folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline.dvcfile import stage_params
from pipeline.params import PipelineParams, load_pipeline_params
from pipeline.stages._common import log_numbers, open_stage, with_backbone, write_json
from pipeline.tracking import log_small_artifacts
from recyclelora.data.check import ensure_checked
from recyclelora.io import PARTIAL_SUFFIX, atomic_dir, atomic_write_text, sha256_bytes, sha256_file
from recyclelora.models.config import ModelConfig
from recyclelora.signals import Interrupted
from recyclelora.train.distributed import resolve_device
from recyclelora.train.launch import relaunch
from recyclelora.train.loop import LOG_FILE, MODEL_FILE, SAMPLES_FILE, SUMMARY_FILE, TrainResult, train

KEY_FILE = "run_key.txt"


def run_key(params: PipelineParams, params_path: Path, model: ModelConfig) -> str:
    """SHA-256 of what determines a training run: the params read (dvc.yaml's for the stage), the backbone
    file and the manifests."""
    manifests = (*params.run.data.train, *params.run.data.val)
    parts = {
        "params": params.sections(*stage_params("train", params_path)),
        "backbone": sha256_file(model.backbone.weights),
        "manifests": {path: sha256_file(path) for path in manifests},
    }
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


def _prepare_run_folder(folder: Path, key: str) -> bool:
    """Keep ``folder`` if it holds a run of ``key`` (True: resume it), else empty it and record ``key``."""
    key_file = folder / KEY_FILE
    if key_file.is_file() and key_file.read_text() == key:
        return True
    shutil.rmtree(folder)
    folder.mkdir()
    atomic_write_text(key_file, key)
    return False


def log_row(row: dict[str, float]) -> None:
    """One logged training row as MLflow metrics at its step (the curves)."""
    log_numbers({key: value for key, value in row.items() if key != "step"}, int(row["step"]))


def last_validation(result: TrainResult) -> dict[str, float]:
    """The ``val_*`` entries of the last logged row that has them (empty without validation)."""
    rows = [row for row in result.history if any(key.startswith("val_") for key in row)]
    return {key: value for key, value in rows[-1].items() if key.startswith("val_")} if rows else {}


def launch(params_path: Path, module_args: Sequence[str]) -> None:
    """Validate ``params_path``, then run ``python <module_args>`` (this stage's command) as the run's processes
    when several are asked for (:func:`recyclelora.train.launch.relaunch`; this process is replaced), else
    return: bad params stop here with one line, not once per process."""
    load_pipeline_params(params_path)
    relaunch(module_args)


def _follow(params_path: Path, weights: Path, init_cache: Path, out: Path) -> None:
    """A rank > 0: train in rank 0's partial folder, which rank 0 has prepared when the process group forms (it
    joins after :func:`_prepare_run_folder`), resuming from its checkpoint exactly when rank 0 does."""
    params = load_pipeline_params(params_path)
    model = with_backbone(params.run.model, weights)
    folder = out.with_name(out.name + PARTIAL_SUFFIX)
    try:
        train(model, params.run.train, params.run.data, folder, resume=True, cache_dir=init_cache, progress=False)
    except Interrupted as stop:  # every rank stops at the same step; rank 0 says so, once
        raise SystemExit(stop.exit_code) from stop


def run_train(
    params_path: Path, weights: Path, init_cache: Path, out: Path, metrics: Path, *, progress: bool = True
) -> dict[str, object] | None:
    """The ``train`` stage: validate params, check the training and validation data (cached), train into
    ``out`` (resuming a matching partial run), write ``metrics`` (the run's summary and last validation),
    record the samples trained on, and log curves, summary, that record and the model (when small) to
    MLflow. Under torchrun, ranks > 0 only train (and return ``None``)."""
    if int(os.environ.get("RANK", "0")) > 0:
        _follow(params_path, weights, init_cache, out)
        return None
    with open_stage("train", params_path, resume_child=True) as params:
        resolve_device(params.run.train.device)  # before the run folder is made: no GPU, no partial folder
        ensure_checked((*params.run.data.train, *params.run.data.val), progress=progress)
        model = with_backbone(params.run.model, weights)
        key = run_key(params, params_path, model)
        with atomic_dir(out, keep_partial=True) as tmp:
            resume = _prepare_run_folder(tmp, key)
            result = train(
                model,
                params.run.train,
                params.run.data,
                tmp,
                resume=resume,
                cache_dir=init_cache,
                on_log=log_row,
                progress=progress,
            )
        summary = json.loads((out / SUMMARY_FILE).read_text()) | last_validation(result)
        write_json(metrics, summary)
        log_numbers({key: value for key, value in summary.items() if not key.startswith("val_")})
        log_small_artifacts([out / MODEL_FILE, out / LOG_FILE, out / SUMMARY_FILE, out / SAMPLES_FILE])
    return summary
