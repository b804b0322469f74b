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

Inside a stage log with MLflow's own API (``mlflow.log_metrics(values, step=step)``, ``mlflow.log_figure``);
:func:`log_small_artifacts` keeps multi-GB files (mlflow #7564) in DVC only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from recyclelora.errors import UserError
from recyclelora.io import flatten, sha256_bytes, sha256_file

DB_ENV = "RECYCLELORA_MLFLOW_DB"
OFFLINE_ENV = "RECYCLELORA_MLFLOW_OFFLINE"
PARENT_ENV = "RECYCLELORA_PARENT_RUN_ID"
PIPELINE_KEY_TAG = "recyclelora.pipeline_key"
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


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """Get or create the experiment; a SQLite store keeps artifacts in ``mlartifacts/`` beside its file."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as error:  # another stage process created it in the meantime
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) or choose "
            "another experiment name"
        )
    return experiment.experiment_id


def _parent_run(
    client: MlflowClient, experiment_id: str, tags: dict[str, str], run_name: str, params_file: Path
) -> Run:
    """``$RECYCLELORA_PARENT_RUN_ID``, else the oldest run tagged with the pipeline key, else a new one."""
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
    client.log_artifact(parent.info.run_id, str(params_file))
    return parent


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
    ``dvc_exp`` (when known) and system metrics. An exception ends child and parent FAILED and propagates;
    success with ``final=True`` ends the parent FINISHED.
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
    tags = {"git_commit": git_commit(workspace), "dvc_exp": exp_name, PIPELINE_KEY_TAG: key}
    tags = {name: value for name, value in tags.items() if value}
    parent = _parent_run(
        client,
        _experiment_id(client, experiment, uri),
        tags,
        run_name=exp_name or f"pipeline-{key[:8]}",
        params_file=workspace / PARAMS_FILE,
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
