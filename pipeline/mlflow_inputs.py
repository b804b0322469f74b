"""The manifests a stage reads, logged as MLflow datasets of its run (the runs page's Dataset column).

A stage's params (its ``params:`` in dvc.yaml) name the manifests it reads: ``data.train`` (context
``training``), ``data.val`` (``validation``) and ``eval.targets`` (``evaluation``). Each becomes an MLflow
dataset named by its stem, with the first 8 hex digits of the file's md5 (DVC's hash of it) as digest, its
workspace path (as params.yaml and dvc.yaml name it) as a ``local`` source, and the schema of its columns and
its row count; the images are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from recyclelora.io import flatten

#: Params keys listing manifests -> the MLflow dataset context of what they hold.
MANIFEST_CONTEXTS = {"data.train": "training", "data.val": "validation", "eval.targets": "evaluation"}
#: Rows a manifest's column schema is inferred from.
SCHEMA_ROWS = 32
#: Hex digits of a digest, as MLflow's own datasets have.
DIGEST_LENGTH = 8


def stage_manifests(params: Mapping[str, object]) -> list[tuple[str, str]]:
    """``(manifest path, context)`` of every manifest ``params`` (nested or dotted) list under
    :data:`MANIFEST_CONTEXTS`, in their order."""
    flat = flatten(params)
    return [
        (str(path), context) for key, context in MANIFEST_CONTEXTS.items() for path in flat.get(key) or ()
    ]


def file_digest(path: Path) -> str:
    """The first :data:`DIGEST_LENGTH` hex digits of the file's md5, the hash DVC records for it."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "md5").hexdigest()[:DIGEST_LENGTH]


def manifest_schema(manifest: pq.ParquetFile) -> str | None:
    """MLflow's column schema (``{"mlflow_colspec": [...]}``) of a manifest's first rows; ``None`` if empty."""
    batch = next(manifest.iter_batches(batch_size=SCHEMA_ROWS), None)
    if batch is None or batch.num_rows == 0:
        return None
    with warnings.catch_warnings():  # a hint that integer columns cannot hold missing values
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        schema = infer_signature(batch.to_pandas()).inputs
    return json.dumps({"mlflow_colspec": schema.to_dict()})


def manifest_input(path: Path, source: str, context: str) -> DatasetInput:
    """The manifest ``path`` as an MLflow dataset input (see the module) with source ``source`` and
    ``context``."""
    manifest = pq.ParquetFile(path)
    dataset = Dataset(
        name=path.stem,
        digest=file_digest(path),
        source_type="local",
        source=json.dumps({"uri": source}),
        schema=manifest_schema(manifest),
        profile=json.dumps({"num_rows": manifest.metadata.num_rows}),
    )
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


#: Tries of :func:`log_stage_inputs` while another run registers the same dataset: MLflow's server looks for the
#: dataset, then inserts it, so two runs logging a new dataset at once (a sweep's jobs) can collide on its unique
#: (experiment, name, digest) key and one gets a 400 error; tried again, it finds the other run's row.
INPUT_ATTEMPTS = 3


def log_stage_inputs(run_id: str, params: Mapping[str, object], workspace: str | os.PathLike[str]) -> None:
    """Log the manifests of :func:`stage_manifests` (paths relative to ``workspace``) as inputs of run
    ``run_id``; a manifest that does not exist is left to the stage to report. A collision with another run
    inserting the same dataset is tried again (:data:`INPUT_ATTEMPTS`)."""
    inputs = [
        manifest_input(Path(workspace, path), path, context)
        for path, context in stage_manifests(params)
        if Path(workspace, path).is_file()
    ]
    for attempt in range(1, INPUT_ATTEMPTS + 1):
        try:
            if inputs:
                MlflowClient().log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:
            if attempt == INPUT_ATTEMPTS or "INSERT INTO datasets" not in str(error):
                raise
            time.sleep(0.2 * attempt)
