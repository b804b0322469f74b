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
    At a stage's start :class:`TrackingServerUnreachable` is raised before any work (a run's id comes from
    the server, so a run cannot be opened without it). ``RECYCLELORA_MLFLOW_OFFLINE=1`` records into the
    local SQLite store instead, with a warning that names it. A server that answers but not as MLflow's REST
    API (a web page, another service) raises :class:`NotAnMlflowServer`.

Lost server: tracking never costs training
    The stages bound MLflow's HTTP retries (:data:`HTTP_RETRY_DEFAULTS`, unless the user set them): a dead
    server costs a call about 2 s, not MLflow's 4 minutes. A server that stops answering inside a stage
    (:class:`_SpoolingStore`) is reported in one warning line; what the stage logs from then on (metrics,
    params, tags, dataset inputs, run status, small artifacts) is appended to the :class:`Spool`,
    ``mlflow-spool/`` at the main repository root (Git and DVC ignore it), without touching the network. A
    thread asks the server every ``RECYCLELORA_MLFLOW_RETRY_SECONDS`` (30) whether it answers again; the next
    write then sends the spool (one line says so). A stage that ends with records kept says so in one line;
    ``python -m pipeline sync`` sends them, and every stage's start tries too.

Every run a stage opens is ended
    :func:`stage_run` turns stop signals (SIGINT, SIGTERM, SIGUSR1/2) into
    :class:`~recyclelora.signals.Interrupted` (exit ``128 + signum``): ``Interrupted`` or
    ``KeyboardInterrupt`` ends child and parent KILLED, any other error FAILED. Opening and ending the runs
    (headline metrics, statuses) hold signals until they are done, so a second Ctrl-C cannot leave a run
    RUNNING.

Resumed training: one run
    ``stage_run(..., resume_child=True)`` (the train stage) continues the latest child run of the same stage
    under the same parent that did not finish (FAILED, KILLED, or RUNNING after a crash), so a training
    resumed from its checkpoint adds its steps to the same loss curve. The parent is the same while the
    commit, the DVC experiment and params.yaml are (the pipeline key); a child that finished is never
    continued.

Parent run (:func:`stage_run`)
    The stages of one ``dvc repro`` / ``dvc exp run`` are separate processes. They meet through the
    pipeline key ``sha256([git commit, DVC_EXP_NAME, sha256(params.yaml)])``, a tag on the parent:
    the oldest parent carrying the key is reused, also when a stage is rerun after a failure;
    ``RECYCLELORA_PARENT_RUN_ID`` names a parent explicitly. Children attach with ``parent_run_id``
    (``nested=True`` only sees runs of its own process, mlflow #2194). The parent is RUNNING while a
    stage runs and ends as the stage that ended last did: FINISHED, FAILED or KILLED, so a partial pipeline
    (``dvc repro train``, a sweep's shared job) leaves no parent RUNNING. Uncommitted code edits do not change
    the key, so such a rerun adds children to the same parent.

What the MLflow UI shows
    The experiment carries ``mlflow.experimentKind = custom_model_development``, the kind MLflow 3's UI
    reads to open on training runs, not its GenAI overview (3.17's UI follows its *GenAI / Model training*
    switch instead: ``#/experiments/<id>?workflowType=machine_learning``), and a description
    (``mlflow.note.content``). Parent and children carry MLflow's source tags: ``mlflow.source.git.commit``
    (:func:`git_commit`), ``mlflow.source.name`` (``dvc.yaml``, ``dvc.yaml:<stage>``), and ``dvc_exp`` the DVC
    experiment; a child's Dataset column lists the manifests its stage read (:mod:`pipeline.mlflow_inputs`:
    contexts ``training``, ``validation``, ``evaluation``). A new parent is named
    ``<method>-<ranks>-<backbone>-s<seed>`` (``rrqr-16+4-vits14-s0``, ``frozen-vits14-s0``;
    :func:`readable_run_name`) and gets all of ``params.yaml`` as params; each stage that succeeds copies its
    headline metrics (:func:`is_headline_metric`) onto it, its child keeps the detail.
    ``RECYCLELORA_TABLE=<name>`` tags parent and children ``recyclelora.table=<name>``
    (``python -m pipeline.compare run`` sets it for its experiments), to filter one comparison's runs.

Inside a stage log metrics, params and tags with MLflow's own API (``mlflow.log_metrics(values, step=step)``)
and artifacts with :func:`log_small_artifacts`, which keeps multi-GB files (mlflow #7564) in DVC only: both
are spooled while the server is lost; MLflow's own artifact calls (``mlflow.log_figure``) are not.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelInput,
    Metric,
    Param,
    Run,
    RunInfo,
    RunStatus,
    RunTag,
    SourceType,
)
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking.rest_store import RestStore
from mlflow.telemetry.client import set_telemetry_client
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from pipeline.dvcfile import DVC_FILE
from pipeline.mlflow_inputs import log_stage_inputs
from recyclelora.adapters.initialisers import INITIALISERS
from recyclelora.config import read_yaml
from recyclelora.errors import InvalidInputError, UserError
from recyclelora.io import atomic_path, flatten, sha256_bytes, sha256_file
from recyclelora.signals import Interrupted, deferred_stop_signals, raise_on_stop_signals

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
#: The experiment's description in the MLflow UI (set where it has none, so a user's edit stays).
EXPERIMENT_NOTE_TAG = "mlflow.note.content"
EXPERIMENT_NOTE = (
    "RecycleLoRA's DVC pipeline (dvc.yaml, params.yaml). One parent run per `dvc repro` / `dvc exp run`, "
    "named <method>-<ranks>-<backbone>-s<seed>, with all of params.yaml and the headline metrics (mean_mIoU, "
    "mIoU/<target>, val_mIoU); one child run per stage (data, weights, init, train, merge, evaluate, export, "
    "analyze) with the params it reads, its metrics and the manifests it read as datasets. The tags "
    "mlflow.source.git.commit and dvc_exp say which commit and DVC experiment a run comes from."
)
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
#: The spool of records a stage could not send (:class:`Spool`), a folder at the main repository root.
SPOOL_DIR = "mlflow-spool"
SPOOL_FILE = "records.jsonl"
RETRY_ENV = "RECYCLELORA_MLFLOW_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 30.0
#: Seconds the stages wait for a lost server to answer a probe.
PROBE_TIMEOUT = 3.0
#: MLflow's HTTP retry budget in the stages, unless set: MLflow's own (7 retries, backoff factor 2, 120 s
#: timeout) spends about 4 minutes per call on a dead server; these spend about 2 s when the connection is
#: refused (2 retries, waits 0 and 2 s + up to 0.5 s of jitter) and at most 3 x 10 s when nothing answers.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
_TRUNCATED = "...[truncated]"


class TrackingServerUnreachable(UserError, ConnectionError):
    """The MLflow server named by ``MLFLOW_TRACKING_URI`` did not answer."""


class NotAnMlflowServer(InvalidInputError):
    """The server named by ``MLFLOW_TRACKING_URI`` answers, but not as MLflow's REST API."""


def find_repo_root(workspace: str | os.PathLike[str]) -> Path:
    """The main DVC repository holding ``workspace``, also from a ``.dvc/tmp/exps/...`` experiment clone."""
    start = Path(workspace).resolve()
    for folder in (start, *start.parents):
        if ".dvc" not in folder.parts and (folder / ".dvc").is_dir():
            return folder
    raise InvalidInputError(
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
        raise InvalidInputError(
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
        raise InvalidInputError(
            f"MLFLOW_TRACKING_URI={uri!r} is a file store, which MLflow deprecated: use "
            "sqlite:////absolute/path/mlflow.db or an http(s) MLflow server"
        )
    if scheme == "sqlite" and not uri.startswith("sqlite:////"):
        raise InvalidInputError(
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


def bound_http_retries() -> None:
    """Set :data:`HTTP_RETRY_DEFAULTS` where the user has not set those MLflow variables."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def retry_seconds() -> float:
    """``$RECYCLELORA_MLFLOW_RETRY_SECONDS`` (default :data:`DEFAULT_RETRY_SECONDS`): how often a stage asks a
    lost server whether it answers again."""
    text = os.environ.get(RETRY_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_RETRY_SECONDS
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise InvalidInputError(
            f"{RETRY_ENV}={text!r} is not a positive number of seconds: unset it or give e.g. 30"
        )
    return seconds


def unreachable(error: BaseException) -> str | None:
    """Why an MLflow error means the server did not answer (refused, timed out, retries spent), e.g.
    ``ConnectionError: [Errno 111] Connection refused``; ``None`` for an answer that refuses the request."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TrackingServerLost):
            return str(seen)
        if isinstance(seen, requests.exceptions.HTTPError):  # an answer: 4xx, or 5xx MLflow does not retry
            return None
        if isinstance(seen, requests.exceptions.RequestException):
            cause = re.search(r"\[Errno -?\d+\] [^'\"()]+", str(seen))
            return type(seen).__name__ + (f": {cause[0]}" if cause else "")
        seen = seen.__cause__ or seen.__context__
    return None


def warn(text: str) -> None:
    """One ``warning: ...`` line on stderr."""
    print(f"warning: {text}", file=sys.stderr, flush=True)


def spool_path(workspace: str | os.PathLike[str]) -> Path:
    """The spool folder of the main repository holding ``workspace`` (:data:`SPOOL_DIR` at its root)."""
    return find_repo_root(workspace) / SPOOL_DIR


class TrackingServerLost(MlflowException):
    """A read from the MLflow server while it does not answer (writes are spooled instead)."""


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


class Spool:
    """The MLflow records stages could not send: ``records.jsonl`` (one JSON object a line, appended under a
    file lock, so concurrent stages share it) and the copies of artifacts in ``files/``.

    A record names its server (``uri``), run and operation: ``batch`` (metrics ``[key, value, timestamp,
    step]``, params and tags ``[key, value]``), ``update`` (status, end time, name), ``inputs`` (datasets as
    :meth:`DatasetInput.to_dictionary` gives them, logged model ids) or ``artifact`` (a copy and its artifact
    folder). :meth:`send` replays them in order and keeps what could not be sent.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.file = self.folder / SPOOL_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def append(self, record: Mapping[str, object], file: Path | None = None) -> None:
        """Add ``record``; with ``file``, a copy of it the record names (an artifact to log later)."""
        if file is not None:
            copy = self.folder / "files" / uuid.uuid4().hex / file.name
            copy.parent.mkdir(parents=True)
            shutil.copyfile(file, copy)
            record = {**record, "file": copy.relative_to(self.folder).as_posix()}
        line = (json.dumps(record) + "\n").encode()
        with self._locked():
            fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write of one line: a signal cannot leave half of it
            finally:
                os.close(fd)

    def records(self) -> list[dict]:
        """The records kept, oldest first (a line cut short by a crash is left out)."""
        if not self.file.is_file():
            return []
        records = []
        for line in self.file.read_text().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def send(self, stores: Callable[[str], RestStore | None]) -> tuple[int, set[str]]:
        """Replay the records to ``stores(uri)`` (``None``: keep that server's records), in order; returns how
        many were sent and the servers that stopped answering (they keep the rest of their records). A record
        a server refuses is dropped with a warning."""
        sent: int = 0
        kept: list[dict] = []
        lost: set[str] = set()
        if not self.file.is_file():
            return sent, lost
        with self._locked():
            for group in self._groups(self.records()):
                uri = group[0]["uri"]
                store = None if uri in lost else stores(uri)
                if store is None:
                    kept += group
                    continue
                try:
                    _replay(store, uri, group, self.folder)
                    sent += len(group)
                except (MlflowException, OSError) as error:  # OSError: an artifact's copy is gone
                    if unreachable(error):
                        lost.add(uri)
                        kept += group
                    else:
                        warn(
                            f"MLflow server {uri} refused {len(group)} spooled record(s) of run "
                            f"{group[0]['run_id']}, dropped: {getattr(error, 'message', error)}"
                        )
                        self._forget(group)
            with atomic_path(self.file) as tmp:
                tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
        return sent, lost

    @staticmethod
    def _groups(records: list[dict]) -> list[list[dict]]:
        """Consecutive ``batch`` records of one run merged into a group; every other record alone."""
        groups: list[list[dict]] = []
        for record in records:
            last = groups[-1][-1] if groups else None
            same = last is not None and (last["uri"], last["run_id"]) == (record["uri"], record["run_id"])
            if same and last["op"] == record["op"] == "batch":
                groups[-1].append(record)
            else:
                groups.append([record])
        return groups

    def _forget(self, group: list[dict]) -> None:
        for record in group:
            if "file" in record:
                shutil.rmtree((self.folder / record["file"]).parent, ignore_errors=True)


def _replay(store: RestStore, uri: str, group: list[dict], folder: Path) -> None:
    """Send one :meth:`Spool._groups` group of the spool ``folder`` with ``store``'s own (not spooling) REST
    calls."""
    first = group[0]
    run_id = first["run_id"]
    if first["op"] == "update":
        status = RunStatus.from_string(first["status"]) if first["status"] else None
        RestStore.update_run_info(store, run_id, status, first["end_time"], first["run_name"])
    elif first["op"] == "artifact":
        copy = folder / first["file"]
        artifact_uri = RestStore.get_run(store, run_id).info.artifact_uri
        get_artifact_repository(artifact_uri, tracking_uri=uri).log_artifact(
            str(copy), first["artifact_path"]
        )
        shutil.rmtree(copy.parent)
    elif first["op"] == "inputs":
        datasets = [_dataset_input(entry) for entry in first["datasets"]]
        models = [LoggedModelInput(model_id) for model_id in first["models"]]
        RestStore.log_inputs(store, run_id, datasets, models)
    else:
        metrics = [Metric(*entry) for record in group for entry in record["metrics"]]
        params = {key: value for record in group for key, value in record["params"]}
        tags = {key: value for record in group for key, value in record["tags"]}
        for chunk in _chunks([Param(k, v) for k, v in params.items()], MAX_PARAMS_TAGS_PER_BATCH):
            RestStore.log_batch(store, run_id, [], chunk, [])
        for chunk in _chunks([RunTag(k, v) for k, v in tags.items()], MAX_PARAMS_TAGS_PER_BATCH):
            RestStore.log_batch(store, run_id, [], [], chunk)
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            RestStore.log_batch(store, run_id, chunk, [], [])


def _dataset_input(entry: Mapping[str, object]) -> DatasetInput:
    """The :class:`DatasetInput` of its :meth:`DatasetInput.to_dictionary`."""
    tags = [InputTag(key, value) for key, value in entry["tags"].items()]
    return DatasetInput(Dataset(**entry["dataset"]), tags)


class _SpoolingStore(RestStore):
    """MLflow's REST store for one server that never lets a lost server stop a stage.

    A write (metrics, params, tags, dataset inputs, a run's status, an artifact through :meth:`log_artifact`)
    that finds the server gone after MLflow's bounded retries marks it lost, with one warning line, and goes to
    the :class:`Spool`, as does every later write, without trying the network. A thread asks the server every
    :func:`retry_seconds` whether it answers again; the next write then sends the spool first (one line says
    so). While lost, reading a run this process has seen gives its last copy (MLflow reads it to print the
    run's address when it ends it); other reads raise :class:`TrackingServerLost`. The latest value of each
    metric logged per run is kept (:meth:`logged`), so headline metrics reach the parent without a read.
    """

    def __init__(self, uri: str, spool: Spool, every: float) -> None:
        super().__init__(functools.partial(get_default_host_creds, uri))
        self.uri, self.spool, self.every = uri, spool, every
        self.spooled = 0
        self._lock = threading.RLock()
        self._lost = False
        self._answers = threading.Event()
        self._closed = threading.Event()
        self._runs: dict[str, Run] = {}
        self._logged: dict[str, dict[str, tuple[int, int, float]]] = {}

    # what the stage asks of it

    def remember(self, run: Run) -> None:
        """Keep ``run`` to answer reads of it while the server is lost."""
        self._runs[run.info.run_id] = run

    def note_previous(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Start :meth:`logged` of a continued run from its earlier metrics (any value logged now wins)."""
        self._logged[run_id] = {key: (-1, -1, value) for key, value in metrics.items()}

    def logged(self, run_id: str) -> dict[str, float]:
        """The latest value (largest step, then time) of each metric logged to ``run_id`` by this process."""
        return {key: value for key, (_, _, value) in self._logged.get(run_id, {}).items()}

    def send_spool(self) -> None:
        """Send what earlier stages spooled for this server (a stage's start); one line if there was any."""
        with self._lock:
            sent, _ = self.spool.send(self._for_me)
        if sent:
            warn(f"sent {sent} MLflow record(s) that earlier stages kept in {self.spool.file} to {self.uri}")

    def close(self) -> None:
        """Stop asking a lost server; send the spool if it answers now, else say what stays in it."""
        self._closed.set()
        with self._lock:
            if self._lost and (self._answers.is_set() or self._probe()):
                self._reconnect()
            if self._lost:
                warn(
                    f"{self.spooled} MLflow record(s) of this stage are kept in {self.spool.file}: run "
                    f"`python -m pipeline sync` once {self.uri} answers (the next stage tries too)"
                )

    def log_artifact(self, run_id: str, file: Path, artifact_path: str | None) -> None:
        """Log ``file`` to the run's artifacts, or keep a copy in the spool while the server is lost."""
        record = {"op": "artifact", "run_id": run_id, "artifact_path": artifact_path}
        client = MlflowClient(self.uri)
        self._write(record, lambda: client.log_artifact(run_id, str(file), artifact_path), file)

    # the store's writes and reads

    def log_metric(self, run_id: str, metric: Metric) -> None:
        self.log_batch(run_id, [metric], [], [])

    def log_param(self, run_id: str, param: Param) -> None:
        self.log_batch(run_id, [], [param], [])

    def set_tag(self, run_id: str, tag: RunTag) -> None:
        self.log_batch(run_id, [], [], [tag])

    def log_batch(self, run_id: str, metrics: list[Metric], params: list[Param], tags: list[RunTag]) -> None:
        latest = self._logged.setdefault(run_id, {})
        for metric in metrics:
            entry = (metric.step, metric.timestamp, metric.value)
            latest[metric.key] = max(latest.get(metric.key, entry), entry, key=lambda item: item[:2])
        record = {
            "op": "batch",
            "run_id": run_id,
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
            "params": [[p.key, p.value] for p in params],
            "tags": [[t.key, t.value] for t in tags],
        }
        self._write(record, functools.partial(super().log_batch, run_id, metrics, params, tags))

    def log_inputs(
        self,
        run_id: str,
        datasets: list[DatasetInput] | None = None,
        models: list[LoggedModelInput] | None = None,
    ) -> None:
        record = {
            "op": "inputs",
            "run_id": run_id,
            "datasets": [dataset.to_dictionary() for dataset in datasets or []],
            "models": [model.model_id for model in models or []],
        }
        self._write(record, functools.partial(super().log_inputs, run_id, datasets, models))

    def update_run_info(
        self, run_id: str, run_status: int | None, end_time: int | None, run_name: str | None
    ) -> RunInfo | None:
        status = RunStatus.to_string(run_status) if run_status is not None else None
        record = {
            "op": "update",
            "run_id": run_id,
            "status": status,
            "end_time": end_time,
            "run_name": run_name,
        }
        send = functools.partial(super().update_run_info, run_id, run_status, end_time, run_name)
        return self._write(record, send)

    def create_run(self, *args: object, **kwargs: object) -> Run:
        self._check()
        run = super().create_run(*args, **kwargs)
        self.remember(run)
        return run

    def get_run(self, run_id: str) -> Run:
        with self._lock:
            if not self._lost:
                try:
                    run = super().get_run(run_id)
                except MlflowException as error:
                    if not unreachable(error):
                        raise
                    self._lose(error)
                else:
                    self.remember(run)
                    return run
        if run_id in self._runs:
            return self._runs[run_id]
        raise TrackingServerLost(f"MLflow server {self.uri} does not answer: run {run_id} cannot be read")

    # the link

    def _check(self) -> None:
        with self._lock:
            if self._lost and self._answers.is_set():
                self._reconnect()
            if self._lost:
                raise TrackingServerLost(f"MLflow server {self.uri} does not answer")

    def _write(self, record: dict, send: Callable[[], object], file: Path | None = None) -> object:
        with self._lock:
            if self._lost and self._answers.is_set():
                self._reconnect()
            if not self._lost:
                try:
                    return send()
                except MlflowException as error:
                    if not unreachable(error):
                        raise
                    self._lose(error)
            self.spool.append(record | {"uri": self.uri}, file)
            self.spooled += 1
            return None

    def _lose(self, error: MlflowException) -> None:
        self._lost = True
        self._answers.clear()
        warn(
            f"MLflow server {self.uri} stopped answering ({unreachable(error)}); the stage goes on and keeps "
            f"what it logs in {self.spool.file}, sent when the server answers again (asked every {self.every:g} "
            "s) or by `python -m pipeline sync`"
        )
        threading.Thread(target=self._watch, name="mlflow-server-watch", daemon=True).start()

    def _probe(self) -> bool:
        try:
            return mlflow_server_answers(self.uri, PROBE_TIMEOUT)
        except NotAnMlflowServer:
            return False

    def _watch(self) -> None:
        while not self._closed.wait(self.every):
            if self._probe():
                self._answers.set()
                return

    def _reconnect(self) -> None:
        with _uninterrupted():
            sent, lost = self.spool.send(self._for_me)
        if lost:  # lost again while sending
            self._answers.clear()
            threading.Thread(target=self._watch, name="mlflow-server-watch", daemon=True).start()
            return
        self._lost = False
        self.spooled = 0
        warn(f"MLflow server {self.uri} answers again: sent the {sent} record(s) kept in {self.spool.file}")

    def _for_me(self, uri: str) -> RestStore | None:
        return self if uri == self.uri else None


@contextlib.contextmanager
def _spooling(uri: str, workspace: Path) -> Iterator[_SpoolingStore | None]:
    """Make MLflow use a :class:`_SpoolingStore` for the http(s) server ``uri`` while the block runs (``None``
    for other stores), after sending what earlier stages spooled for it."""
    if urlparse(uri).scheme not in ("http", "https"):
        yield None
        return
    store = _SpoolingStore(uri, Spool(spool_path(workspace)), retry_seconds())
    # MLflow builds one store per URI through this scheme registry (cached): ours for ``uri``, its own otherwise.
    registry = tracking_utils._tracking_store_registry
    builders = {scheme: registry.get_store_builder(f"{scheme}://") for scheme in ("http", "https")}

    def build(store_uri: str, artifact_uri: str | None = None) -> RestStore:
        if store_uri == uri:
            return store
        return builders[urlparse(store_uri).scheme](store_uri=store_uri, artifact_uri=artifact_uri)

    for scheme in builders:
        registry.register(scheme, build)
    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    retry_log = logging.getLogger("urllib3.connectionpool")
    level = retry_log.level
    retry_log.setLevel(logging.ERROR)  # its "Retrying ..." lines, one per attempt
    try:
        store.send_spool()
        yield store
    finally:
        store.close()
        retry_log.setLevel(level)
        for scheme, builder in builders.items():
            registry.register(scheme, builder)
        TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()


def sync_spool(workspace: str | os.PathLike[str]) -> int:
    """Send the records stages spooled (:class:`Spool`) to their servers; returns how many were sent.

    Raises :class:`TrackingServerUnreachable` (after sending what it could) when a server does not answer.
    """
    bound_http_retries()
    spool = Spool(spool_path(workspace))
    uris = {record["uri"] for record in spool.records()}
    answering = {uri for uri in uris if mlflow_server_answers(uri, PROBE_TIMEOUT)}
    stores = {uri: RestStore(functools.partial(get_default_host_creds, uri)) for uri in answering}
    sent, _ = spool.send(stores.get)
    kept = spool.records()
    if kept:
        silent = sorted({record["uri"] for record in kept})
        raise TrackingServerUnreachable(
            f"{len(kept)} MLflow record(s) stay in {spool.file}: {', '.join(silent)} did not answer; start "
            "the server and run `python -m pipeline sync` again"
        )
    return sent


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


#: What MLflow accepts in a param name; a mapping with another key (a label map's '#rrggbb') is one value.
_PARAM_NAME = re.compile(r"[\w\-. :/]+")


def _nameable(tree: Mapping[str, object]) -> dict[str, object]:
    """``tree`` with every mapping whose keys MLflow cannot name kept whole, as its JSON text."""
    return {
        key: value
        if not isinstance(value, Mapping)
        else _nameable(value)
        if all(_PARAM_NAME.fullmatch(str(k)) for k in value)
        else json.dumps(value, default=str)
        for key, value in tree.items()
    }


def flatten_params(params: Mapping[str, object]) -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (empty sections left out, a mapping with keys
    MLflow refuses kept as one JSON value); values cut to MLflow's 6000 characters."""
    flat = flatten(_nameable(params), keep_empty=False)
    for name in flat:
        if len(name) > MAX_ENTITY_KEY_LENGTH:
            raise InvalidInputError(
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
    """The id of experiment ``name``, created if missing, tagged as model development and described
    (:data:`EXPERIMENT_NOTE`, where it has no description); a SQLite store keeps artifacts in ``mlartifacts/``
    beside its file."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
        try:
            return client.create_experiment(
                name,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, EXPERIMENT_NOTE_TAG: EXPERIMENT_NOTE},
            )
        except MlflowException as error:  # another stage process created it in the meantime
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != "active":
        raise InvalidInputError(
            f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) or choose "
            "another experiment name"
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag, or by another tool
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if EXPERIMENT_NOTE_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_NOTE_TAG, EXPERIMENT_NOTE)
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
            raise InvalidInputError(
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


def _latest_metrics(store: _SpoolingStore | None, client: MlflowClient, run_id: str) -> dict[str, float]:
    """The run's latest metric values: as this process logged them through a server's store (also while the
    server is lost), else read back from the store."""
    return store.logged(run_id) if store is not None else client.get_run(run_id).data.metrics


def _copy_headline_metrics(metrics: Mapping[str, float], client: MlflowClient, parent_id: str) -> None:
    """Log the child's latest :func:`is_headline_metric` values onto the parent."""
    now = int(time.time() * 1000)
    headline = [Metric(key, value, now, 0) for key, value in metrics.items() if is_headline_metric(key)]
    if headline:
        client.log_batch(parent_id, metrics=headline)


def _unfinished_child(client: MlflowClient, parent: Run, stage: str) -> str | None:
    """The latest child run ``stage`` of ``parent`` that did not finish (FAILED, KILLED, or RUNNING after a
    crash), if any."""
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.stage = '{stage}' "
        "and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold stop signals while the block runs, then deliver the first one to the handler outside it (which
    raises :class:`~recyclelora.signals.Interrupted`, or records it for a training loop)."""
    with deferred_stop_signals() as stop:
        yield
    if stop:
        signal.raise_signal(stop.signum)


@contextlib.contextmanager
def _server_needed(uri: str) -> Iterator[None]:
    """Report a server lost while a stage opens its runs (before any work) as :class:`TrackingServerUnreachable`."""
    try:
        yield
    except MlflowException as error:
        if not unreachable(error):
            raise
        raise TrackingServerUnreachable(
            f"MLflow server {uri} (MLFLOW_TRACKING_URI) stopped answering while the stage opened its runs: "
            f"start it, fix MLFLOW_TRACKING_URI, or set {OFFLINE_ENV}=1 to record into the local SQLite store"
        ) from error


def _end_runs(client: MlflowClient, child: mlflow.ActiveRun | None, parent_id: str, status: str) -> None:
    """End the child (when it was started) and the parent with ``status``."""
    if child is not None:
        mlflow.end_run(status)
    client.set_terminated(parent_id, status)


def source_tags(stage: str | None) -> dict[str, str]:
    """MLflow's source tags of a run: ``dvc.yaml`` for the parent (``stage=None``), ``dvc.yaml:<stage>`` (DVC's
    address of the stage) for a child."""
    name = DVC_FILE if stage is None else f"{DVC_FILE}:{stage}"
    return {MLFLOW_SOURCE_NAME: name, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}


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
    resume_child: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Record this stage process as the child run ``stage`` of its pipeline's parent run.

    ``repo_root`` is the DVC workspace the stage runs in (it holds ``params.yaml``). The child gets ``params``
    flattened (``train.lr``) and whole (artifact ``params.yaml``), the manifests those params name as MLflow
    datasets (:func:`~pipeline.mlflow_inputs.log_stage_inputs`), the tags ``stage``, MLflow's
    ``mlflow.source.git.commit`` and :func:`source_tags`, ``dvc_exp`` (the DVC experiment), ``recyclelora.table``,
    ``slurm.job_id`` and ``slurm.node`` (when known) and system metrics; with ``resume_child`` it continues the latest child ``stage`` of the parent that did not finish, if any. Stop signals raise
    :class:`~recyclelora.signals.Interrupted` inside the block. An ``Interrupted`` or ``KeyboardInterrupt``
    ends child and parent KILLED, any other exception FAILED, and propagates; success copies the headline
    metrics onto the parent and ends both FINISHED (the next stage sets the parent RUNNING again). Signals wait
    while runs are opened and ended; one that came while they were ended on success ends them KILLED and
    raises ``Interrupted`` after. A server lost inside the block costs the stage nothing
    (:class:`_SpoolingStore`).
    """
    if not stage:
        raise ValueError("stage must name the dvc.yaml stage, got an empty string")
    flat = flatten_params(params)
    workspace = Path(repo_root)
    with raise_on_stop_signals():
        bound_http_retries()
        uri = tracking_uri(workspace)
        key = pipeline_key(workspace)
        mlflow.set_tracking_uri(uri)
        with _spooling(uri, workspace) as store:
            client = MlflowClient(uri)
            exp_name = os.environ.get("DVC_EXP_NAME")
            tags = {
                MLFLOW_GIT_COMMIT: git_commit(workspace),
                "dvc_exp": exp_name,
                PIPELINE_KEY_TAG: key,
                TABLE_TAG: os.environ.get(TABLE_ENV),
                **slurm_tags(os.environ),
            }
            tags = {name: value for name, value in tags.items() if value}
            whole = read_yaml(workspace / PARAMS_FILE) or {}
            with _server_needed(uri):
                parent = _parent_run(
                    client,
                    get_or_create_experiment(client, experiment, uri),
                    tags | source_tags(None),
                    run_name=readable_run_name(whole) or exp_name or f"pipeline-{key[:8]}",
                    params_file=workspace / PARAMS_FILE,
                    params=flatten_params(whole),
                )
            parent_id = parent.info.run_id
            if store is not None:
                store.remember(parent)
            child = None
            try:
                with _server_needed(uri), _uninterrupted():
                    client.update_run(parent_id, status="RUNNING")
                    previous = _unfinished_child(client, parent, stage) if resume_child else None
                    child = mlflow.start_run(
                        run_id=previous,  # None: a new child
                        experiment_id=parent.info.experiment_id,
                        run_name=stage,
                        parent_run_id=parent_id,
                        tags=tags | source_tags(stage) | {"stage": stage},
                        log_system_metrics=True,
                    )
                    if store is not None and previous:
                        store.note_previous(previous, client.get_run(previous).data.metrics)
                    mlflow.log_params(flat)
                    mlflow.log_dict(dict(params), PARAMS_FILE)
                    log_stage_inputs(child.info.run_id, params, workspace)
                yield child
            except BaseException as error:
                status = "KILLED" if isinstance(error, (Interrupted, KeyboardInterrupt)) else "FAILED"
                with deferred_stop_signals():
                    _end_runs(client, child, parent_id, status)
                raise
            with deferred_stop_signals() as stop:
                _copy_headline_metrics(_latest_metrics(store, client, child.info.run_id), client, parent_id)
                status = "KILLED" if stop else "FINISHED"
                _end_runs(client, child, parent_id, status)
    if stop:
        raise Interrupted(
            f"stopped by {signal.Signals(stop.signum).name} while the stage ended its MLflow runs (ended KILLED)",
            stop.signum,
        )


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
    store = tracking_utils._get_store()
    skipped: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: log artifacts after the stage has written them")
        for file, destination in _files_to_log(path, artifact_path):
            if file.stat().st_size > max_bytes:
                skipped.append(file)
            elif isinstance(store, _SpoolingStore):
                store.log_artifact(run.info.run_id, file, destination)
            else:
                mlflow.log_artifact(str(file), destination)
    if skipped:
        previous = mlflow.get_run(run.info.run_id).data.tags.get(KEPT_IN_DVC_TAG)
        lines = ([previous] if previous else []) + [
            f"{file} ({file.stat().st_size} bytes)" for file in skipped
        ]
        mlflow.set_tag(KEPT_IN_DVC_TAG, _fit("\n".join(lines), MAX_TAG_VAL_LENGTH))
    return skipped
