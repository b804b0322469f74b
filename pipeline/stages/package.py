"""Stage ``package``: the merged model as an MLflow model (:mod:`pipeline.mlflow_model`), for ``mlflow models
serve`` and the experiment's Models view.

The model folder is the DVC output; the same model is logged to the stage's run with the ``evaluate`` stage's
scores linked to it, and with ``track.register_model`` registered as ``models:/recyclelora-<setting>``
(``<setting>``: the pipeline's run name, e.g. ``rrqr-16+4-vits14-s0``), the version tagged with its runs and
key params. MLflow's model calls are not spooled: when the tracking server stops answering, the stage still
writes its model folder and says in one line that the model is not logged (``dvc repro -f package`` logs it once
the server answers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from pipeline.mlflow_model import model_config, pyfunc_arguments
from pipeline.stages._common import open_stage
from pipeline.tracking import flatten_params, unreachable, warn
from recyclelora.io import atomic_dir

#: The logged model's name in its run.
MODEL_NAME = "model"
#: params.yaml keys the logged model and the registered version carry.
KEY_PARAMS = (
    "base.seed",
    "model.backbone.name",
    "model.tuning",
    "model.adapter.init",
    "model.adapter.rank_main",
    "model.adapter.rank_sub",
    "train.iterations",
    "train.lr",
    "eval.crop",
    "eval.stride",
)


def scores(eval_metrics: Path) -> dict[str, float]:
    """``mean_mIoU`` and ``mIoU/<target>`` of the ``evaluate`` stage's metric file (scores it lacks left out)."""
    summary = json.loads(eval_metrics.read_text())
    per_target = {f"mIoU/{name}": entry["mIoU"] for name, entry in summary.items() if isinstance(entry, dict)}
    values = per_target | {"mean_mIoU": summary["mean_mIoU"]}
    return {name: value for name, value in values.items() if value is not None}


def register(info: ModelInfo, setting: str, tags: dict[str, str]) -> str:
    """Register the logged model as a new version of ``recyclelora-<setting>`` with ``tags``; returns its
    ``models:/`` URI."""
    version = mlflow.register_model(info.model_uri, f"recyclelora-{setting}", tags=tags)
    return f"models:/{version.name}/{version.version}"


def log_and_register(
    arguments: dict[str, Any], key_params: dict[str, str], eval_metrics: Path, register_model: bool
) -> ModelInfo:
    """Log the pyfunc to the active run with the scores of ``eval_metrics`` linked to it; register it if asked."""
    info = mlflow.pyfunc.log_model(name=MODEL_NAME, params=key_params, **arguments)
    mlflow.log_metrics(scores(eval_metrics), model_id=info.model_id)
    if register_model:
        run = mlflow.active_run()
        parent = mlflow.get_parent_run(run.info.run_id)
        tags = {"run_id": run.info.run_id, "parent_run_id": parent.info.run_id} | key_params
        mlflow.set_tag("recyclelora.registered_model", register(info, parent.info.run_name, tags))
    return info


def run_package(params_path: Path, checkpoint: Path, eval_metrics: Path, out: Path) -> ModelInfo | None:
    """The ``package`` stage: write the MLflow model folder ``out`` atomically, log the model with the
    scores of ``eval_metrics`` linked to it, and register it when ``track.register_model`` asks. ``None``
    when the tracking server stopped answering: the folder is written, the model not logged (one warning)."""
    with open_stage("package", params_path) as params, atomic_dir(out) as tmp:
        arguments = pyfunc_arguments(checkpoint, model_config(params.run.eval, params.run.data.val_transform))
        mlflow.pyfunc.save_model(tmp, **arguments)
        flat = flatten_params(params.raw)
        key_params = {name: flat[name] for name in KEY_PARAMS if name in flat}
        try:
            return log_and_register(arguments, key_params, eval_metrics, params.track.register_model)
        except MlflowException as error:
            reason = unreachable(error)
            if reason is None:  # the server answered and refused: not a lost server
                raise
            warn(
                f"the MLflow server stopped answering ({reason}): {out} is written, but the model is not logged "
                "or registered; run `dvc repro -f package` once the server answers"
            )
            return None
