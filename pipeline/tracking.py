"""MLflow tracking for DVC stages: one parent run per pipeline, one child run per stage process.

Store (:func:`tracking_uri`)
    ``MLFLOW_TRACKING_URI`` when set (an http(s) server is probed first), else the SQLite file
    ``mlflow.db`` at the root of the *main* repository, addressed by an absolute
    ``sqlite:////abs/path/mlflow.db`` URI. ``dvc exp run --temp`` and queued experiments run in Git
    clones under ``<repo>/.dvc/tmp/exps/<tmpdir>/``, each with its own ``.dvc/``; the root is
    therefore the first folder at or above the workspace that holds ``.dvc/`` and is not itself
    inside a ``.dvc`` folder. ``RECYCLELORA_MLFLOW_DB=/abs/path.db`` overrides the file. Artifacts of
    SQLite stores go to ``mlartifacts/`` beside the database: MLflow's default, ``./mlruns`` in the
    working directory, would vanish with a temporary workspace. The deprecated file store is refused.
    SQLite serialises writers ("database is locked", mlflow #4123): for ``dvc queue start -j N`` run
    ``mlflow server --backend-store-uri sqlite:////abs/path/mlflow.db`` and point
    ``MLFLOW_TRACKING_URI`` at it.

Unreachable server
    :class:`TrackingServerUnreachable` is raised before any work. ``RECYCLELORA_MLFLOW_OFFLINE=1``
    records into the local SQLite store instead, with a warning that names it. A server that answers but
    not as MLflow's REST API (a web page, another service) raises :class:`NotAnMlflowServer`.

Parent run (:func:`stage_run`)
    The stages of one ``dvc repro`` / ``dvc exp run`` are separate processes. They meet through the
    pipeline key ``sha256([git commit, DVC_EXP_NAME, sha256(params.yaml)])``, a tag on the parent:
    the oldest parent carrying the key is reused, also when a stage is rerun after a failure;
    ``RECYCLELORA_PARENT_RUN_ID`` names a parent explicitly. Children attach with ``parent_run_id``
    (``nested=True`` only sees runs of its own process, mlflow #2194). The parent is RUNNING while
    stages run, FAILED after a stage fails and FINISHED when a stage opened with ``final=True``
    succeeds; a pipeline without a final stage leaves its parent RUNNING. Uncommitted code edits do
    not change the key, so such a rerun adds children to the same parent.

What the MLflow UI shows
    The experiment carries ``mlflow.experimentKind = custom_model_development``, the kind MLflow 3's UI
    reads to open on training runs, not its GenAI overview (3.17's UI follows its *GenAI / Model training*
    switch instead: ``#/experiments/<id>?workflowType=machine_learning``). A new parent is named
    ``<method>-<ranks>-<backbone>-s<seed>`` (``rrqr-16+4-vits14-s0``, ``frozen-vits14-s0``;
    :func:`readable_run_name`) and gets all of ``params.yaml`` as params; each stage that succeeds copies its
    headline metrics (:func:`is_headline_metric`) onto it, its child keeps the detail.
    ``RECYCLELORA_TABLE=<name>`` tags parent and children ``recyclelora.table=<name>``
    (``python -m pipeline.compare run`` sets it for its experiments), to filter one comparison's runs.

Inside a stage log with MLflow's own API (``mlflow.log_metrics(values, step=step)``, ``mlflow.log_figure``);
:func:`log_small_artifacts` keeps multi-GB files (mlflow #7564) in DVC only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.telemetry.client import set_telemetry_client
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from recyclelora.adapters.initialisers import INITIALISERS
from recyclelora.config import read_yaml
from recyclelora.errors import UserError
from recyclelora.io import flatten, sha256_bytes, sha256_file

# MLflow 3 starts a usage-telemetry client on import; when it cannot reach its server, a background thread
# removes _MLFLOW_TELEMETRY_SESSION_ID from os.environ, racing any thread that iterates os.environ (a stage
# failed here with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID' in requests' proxy lookup). Turned off unless the
# user sets MLFLOW_DISABLE_TELEMETRY; re-initialised now, so the variable goes in this thread, before any request.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
set_telemetry_client()

DB_ENV = "RECYCLELORA_MLFLOW_DB"
OFFLINE_ENV = "RECYCLELORA_MLFLOW_OFFLINE"
PARENT_ENV = "RECYCLELORA_PARENT_RUN_ID"
TABLE_ENV = "RECYCLELORA_TABLE"
PIPELINE_KEY_TAG = "recyclelora.pipeline_key"
TABLE_TAG = "recyclelora.table"
#: Experiment tag MLflow 3's UI reads: ``custom_model_development`` opens it on runs, not the GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Child metrics copied onto the parent (with ``mIoU/<target>``): evaluate's score, train's last validation,
#: size and speed, analyze's rank efficiency.
HEADLINE_METRICS = frozenset(
    {
        "mean_mIoU",
        "val_mIoU",
        "trainable_parameters/total",
        "iterations_per_second",
        "efficiency_main",
        "efficiency_sub",
    }
)
#: ``vit_<size>_patch<n>...`` -> ``vit<letter><n>`` in run names.
BACKBONE_SIZES = {"tiny": "t", "small": "s", "base": "b", "large": "l", "huge": "h", "giant": "g"}
KEPT_IN_DVC_TAG = "recyclelora.kept_in_dvc"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
PARAMS_FILE = "params.yaml"
#: The MLflow REST call that probes a tracking server.
SEARCH_PATH = "/api/2.0/mlflow/experiments/search"
DEFAULT_MAX_ARTIFACT_BYTES = 50 * 1024**2
_TRUNCATED = "...[truncated]"


class TrackingServerUnreachable(UserError, ConnectionError):
    """The MLflow server named by ``MLFLOW_TRACKING_URI`` did not answer."""


class NotAnMlflowServer(ValueError):
    """The server named by ``MLFLOW_TRACKING_URI`` answers, but not as MLflow's REST API."""


def find_repo_root(workspace: str | os.PathLike[str]) -> Path:
    """The main DVC repository holding ``workspace``, also from a ``.dvc/tmp/exps/...`` experiment clone."""
    start = Path(workspace).resolve()
    for folder in (start, *start.parents):
        if ".dvc" not in folder.parts and (folder / ".dvc").is_dir():
            return folder
    raise ValueError(
        f"no DVC repository (a folder holding .dvc/) at or above {start}: run `dvc init` in the "
        f"repository or set {DB_ENV}=/absolute/path/mlflow.db"
    )


def local_store_path(workspace: str | os.PathLike[str]) -> Path:
    """The local SQLite store: ``$RECYCLELORA_MLFLOW_DB``, else ``mlflow.db`` at the main repository root."""
    override = os.environ.get(DB_ENV)
    if not override:
        return find_repo_root(workspace) / DB_NAME
    path = Path(override).expanduser()
    if not path.is_absolute():
        raise ValueError(
            f"{DB_ENV}={override!r} is relative, but DVC experiments run in other folders: "
            "give an absolute path"
        )
    return path


def local_store_uri(workspace: str | os.PathLike[str]) -> str:
    """``sqlite:////abs/path/mlflow.db`` for :func:`local_store_path`."""
    return f"sqlite:///{local_store_path(workspace).as_posix()}"


def mlflow_server_answers(uri: str, timeout: float = 3.0) -> bool:
    """Whether a server answers ``GET <uri>`` :data:`SEARCH_PATH` within ``timeout`` s: the one probe.

    An answer other than MLflow's (a JSON object, or 401/403 from a server with authentication) raises
    :class:`NotAnMlflowServer`.
    """
    url = f"{uri.rstrip('/')}{SEARCH_PATH}?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body, kind = response.read(1 << 16), response.headers.get_content_type()
        if isinstance(json.loads(body), dict):
            return True
        answer = f"a {kind} reply that is not a JSON object"
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return True
        answer = f"HTTP {error.code} ({error.headers.get_content_type()})"
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        answer = f"a {kind} reply that is not JSON"
    except OSError:  # refused, timed out, unknown host
        return False
    raise NotAnMlflowServer(
        f"MLFLOW_TRACKING_URI={uri} is not an MLflow tracking server: GET {SEARCH_PATH} "
        f"got {answer}; point it at `mlflow server` (e.g. http://127.0.0.1:5000) or unset it to record into "
        "the local SQLite store"
    )


def tracking_uri(repo_root: str | os.PathLike[str], *, timeout: float = 3.0) -> str:
    """The store this process records into: ``MLFLOW_TRACKING_URI`` if set and reachable, else the local one.

    Raises :class:`TrackingServerUnreachable` for a silent http(s) server, unless
    ``RECYCLELORA_MLFLOW_OFFLINE=1``, and :class:`NotAnMlflowServer` for one that is not MLflow.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return local_store_uri(repo_root)
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise ValueError(
            f"MLFLOW_TRACKING_URI={uri!r} is a file store, which MLflow deprecated: use "
            "sqlite:////absolute/path/mlflow.db or an http(s) MLflow server"
        )
    if scheme == "sqlite" and not uri.startswith("sqlite:////"):
        raise ValueError(
            f"MLFLOW_TRACKING_URI={uri!r} is not an absolute SQLite path, but DVC experiments run in other "
            "folders: use sqlite:////absolute/path/mlflow.db"
        )
    if scheme not in ("http", "https"):
        return uri
    if mlflow_server_answers(uri, timeout):
        return uri
    if os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes"):
        local = local_store_uri(repo_root)
        warnings.warn(
            f"MLflow server {uri} is unreachable; {OFFLINE_ENV} is set, so this run is recorded in {local}",
            RuntimeWarning,
            stacklevel=2,
        )
        return local
    raise TrackingServerUnreachable(
        f"MLflow server {uri} (MLFLOW_TRACKING_URI) did not answer GET {SEARCH_PATH} within {timeout} s: "
        f"start it, fix MLFLOW_TRACKING_URI, or set {OFFLINE_ENV}=1 to record into the local SQLite store "
        f"(mlflow.db at the repository root, or ${DB_ENV})"
    )


def git_commit(workspace: str | os.PathLike[str]) -> str | None:
    """The commit the workspace derives from: DVC's ``DVC_EXP_BASELINE_REV`` in experiments, else ``HEAD``."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        return baseline
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def pipeline_key(workspace: str | os.PathLike[str]) -> str:
    """``sha256([git commit, DVC_EXP_NAME, sha256(params.yaml)])``, shared by one run's stages."""
    params = Path(workspace) / PARAMS_FILE
    if not params.is_file():
        raise FileNotFoundError(
            f"{params} not found: repo_root must be the DVC workspace the stage runs in, "
            f"holding {PARAMS_FILE}"
        )
    parts = [git_commit(workspace) or "", os.environ.get("DVC_EXP_NAME", ""), sha256_file(params)]
    return sha256_bytes(json.dumps(parts).encode())


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def flatten_params(params: Mapping[str, object]) -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (empty sections left out); values cut to
    MLflow's 6000 characters."""
    flat = flatten(params, keep_empty=False)
    for name in flat:
        if len(name) > MAX_ENTITY_KEY_LENGTH:
            raise ValueError(
                f"param name {name[:80]!r}... has {len(name)} characters, MLflow allows "
                f"{MAX_ENTITY_KEY_LENGTH}: shorten the params.yaml keys"
            )
    return {name: _fit(str(value), MAX_PARAM_VAL_LENGTH) for name, value in flat.items()}


def _lookup(params: Mapping[str, object], dotted: str) -> object:
    """``params["model"]["tuning"]`` for ``"model.tuning"``; ``None`` where a key is missing."""
    node: object = params
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def backbone_label(name: str) -> str:
    """``vit_small_patch14_dinov2`` -> ``vits14``, ``vit_large_patch14_dinov2`` -> ``vitl14``; others as
    they are."""
    match = re.fullmatch(r"vit_([a-z]+)_patch(\d+)(_.*)?", name)
    if match is None or match[1] not in BACKBONE_SIZES:
        return name
    return f"vit{BACKBONE_SIZES[match[1]]}{match[2]}"


def readable_run_name(params: Mapping[str, object]) -> str | None:
    """``rrqr-16+4-vits14-s0`` from (validated) params.yaml: method, the initialiser's effective ranks,
    backbone, seed; ``frozen-vits14-s0`` without adapters; ``None`` without ``model.tuning``."""
    method = _lookup(params, "model.tuning")
    if method is None:
        return None
    if method == "adapters":
        init = str(_lookup(params, "model.adapter.init"))
        main, sub = (int(_lookup(params, f"model.adapter.rank_{part}")) for part in ("main", "sub"))
        method = f"{init}-" + "+".join(str(rank) for rank in INITIALISERS[init].ranks(main, sub) if rank)
    backbone = _lookup(params, "model.backbone.name")
    seed = _lookup(params, "base.seed")
    seed = _lookup(params, "train.seed") if seed is None else seed
    parts = [str(method)]
    if backbone:
        parts.append(backbone_label(str(backbone)))
    if seed is not None:
        parts.append(f"s{seed}")
    return "-".join(parts)


def is_headline_metric(key: str) -> bool:
    """Whether a stage's metric is copied onto the parent run: :data:`HEADLINE_METRICS`, ``mIoU/<target>``."""
    return key in HEADLINE_METRICS or key.startswith("mIoU/")


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing, tagged as model development; a SQLite store keeps
    artifacts in ``mlartifacts/`` beside its file."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException as error:  # another stage process created it in the meantime
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) or choose "
            "another experiment name"
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag, or by another tool
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _parent_run(
    client: MlflowClient,
    experiment_id: str,
    tags: dict[str, str],
    run_name: str,
    params_file: Path,
    params: dict[str, str],
) -> Run:
    """``$RECYCLELORA_PARENT_RUN_ID``, else the oldest run tagged with the pipeline key, else a new one with
    ``params`` (all of ``params_file``, flat; the key holds its hash, so every stage gives the same)."""
    explicit = os.environ.get(PARENT_ENV)
    if explicit:
        try:
            return client.get_run(explicit)
        except MlflowException as error:
            raise ValueError(
                f"{PARENT_ENV}={explicit!r} names no run in the store: {error.message}"
            ) from error
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{tags[PIPELINE_KEY_TAG]}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        return found[0]
    parent = client.create_run(experiment_id, tags=tags, run_name=run_name)
    client.log_batch(parent.info.run_id, params=[Param(name, value) for name, value in params.items()])
    client.log_artifact(parent.info.run_id, str(params_file))
    return parent


def _copy_headline_metrics(client: MlflowClient, child_id: str, parent_id: str) -> None:
    """Log the child's latest :func:`is_headline_metric` values onto the parent."""
    now = int(time.time() * 1000)
    metrics = client.get_run(child_id).data.metrics
    headline = [Metric(key, value, now, 0) for key, value in metrics.items() if is_headline_metric(key)]
    if headline:
        client.log_batch(parent_id, metrics=headline)


def slurm_tags(environ: Mapping[str, str]) -> dict[str, str | None]:
    """``slurm.job_id`` and ``slurm.node`` of a stage that runs in a SLURM job (``None`` outside one)."""
    return {"slurm.job_id": environ.get("SLURM_JOB_ID"), "slurm.node": environ.get("SLURMD_NODENAME")}


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, object],
    *,
    repo_root: str | os.PathLike[str],
    experiment: str = "recyclelora",
    final: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Record this stage process as the child run ``stage`` of its pipeline's parent run.

    ``repo_root`` is the DVC workspace the stage runs in (it holds ``params.yaml``). The child gets ``params``
    flattened (``train.lr``) and whole (artifact ``params.yaml``), the tags ``stage``, ``git_commit``,
    ``dvc_exp`` and ``recyclelora.table`` (when known) and system metrics. An exception ends child and parent
    FAILED and propagates; success copies the headline metrics onto the parent, and with ``final=True`` ends
    it FINISHED.
    """
    if not stage:
        raise ValueError("stage must name the dvc.yaml stage, got an empty string")
    flat = flatten_params(params)
    workspace = Path(repo_root)
    uri = tracking_uri(workspace)
    key = pipeline_key(workspace)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp_name = os.environ.get("DVC_EXP_NAME")
    tags = {
        "git_commit": git_commit(workspace),
        "dvc_exp": exp_name,
        PIPELINE_KEY_TAG: key,
        TABLE_TAG: os.environ.get(TABLE_ENV),
        **slurm_tags(os.environ),
    }
    tags = {name: value for name, value in tags.items() if value}
    whole = read_yaml(workspace / PARAMS_FILE) or {}
    parent = _parent_run(
        client,
        get_or_create_experiment(client, experiment, uri),
        tags,
        run_name=readable_run_name(whole) or exp_name or f"pipeline-{key[:8]}",
        params_file=workspace / PARAMS_FILE,
        params=flatten_params(whole),
    )
    parent_id = parent.info.run_id
    client.update_run(parent_id, status="RUNNING")
    with mlflow.start_run(
        experiment_id=parent.info.experiment_id,
        run_name=stage,
        parent_run_id=parent_id,
        tags=tags | {"stage": stage},
        log_system_metrics=True,
    ) as run:
        mlflow.log_params(flat)
        mlflow.log_dict(dict(params), PARAMS_FILE)
        try:
            yield run
        except BaseException:
            client.set_terminated(parent_id, "FAILED")
            raise
    _copy_headline_metrics(client, run.info.run_id, parent_id)
    if final:
        client.set_terminated(parent_id, "FINISHED")


def _files_to_log(path: Path, artifact_path: str | None) -> list[tuple[Path, str | None]]:
    """``(file, artifact folder)`` pairs: a file as given, folder files under ``<artifact_path>/<name>``."""
    if path.is_file():
        return [(path, artifact_path)]
    base = PurePosixPath(artifact_path or "", path.name)
    return [
        (file, (base / file.parent.relative_to(path).as_posix()).as_posix())
        for file in sorted(path.rglob("*"))
        if file.is_file()
    ]


def log_small_artifacts(
    paths: Iterable[str | os.PathLike[str]],
    *,
    max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
    artifact_path: str | None = None,
) -> list[Path]:
    """Log files (a folder: every file in it, under its name) of at most ``max_bytes`` to the active run.

    Returns the larger files, which stay in DVC only; the run lists them with their sizes in the tag
    ``recyclelora.kept_in_dvc``.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_small_artifacts needs an active run: call it inside `with stage_run(...)`")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    skipped: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: log artifacts after the stage has written them")
        for file, destination in _files_to_log(path, artifact_path):
            if file.stat().st_size <= max_bytes:
                mlflow.log_artifact(str(file), destination)
            else:
                skipped.append(file)
    if skipped:
        previous = mlflow.get_run(run.info.run_id).data.tags.get(KEPT_IN_DVC_TAG)
        lines = ([previous] if previous else []) + [
            f"{file} ({file.stat().st_size} bytes)" for file in skipped
        ]
        mlflow.set_tag(KEPT_IN_DVC_TAG, _fit("\n".join(lines), MAX_TAG_VAL_LENGTH))
    return skipped
