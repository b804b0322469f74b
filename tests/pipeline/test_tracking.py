"""MLflow stage tracking: store resolution, reachability, and parent/child runs across stage processes."""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from pipeline import stages
from pipeline.presets import apply_preset
from pipeline.tracking import (
    DB_ENV,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HTTP_RETRY_DEFAULTS,
    KEPT_IN_DVC_TAG,
    OFFLINE_ENV,
    PIPELINE_KEY_TAG,
    RETRY_ENV,
    TABLE_ENV,
    TABLE_TAG,
    NotAnMlflowServer,
    Spool,
    TrackingServerUnreachable,
    backbone_label,
    bound_http_retries,
    flatten_params,
    mlflow_server_answers,
    pipeline_key,
    readable_run_name,
    retry_seconds,
    tracking_uri,
    unreachable,
)
from recyclelora.config import read_yaml
from tests.local_server import serve_replies
from tests.pipeline.test_stages import CHECKSUMS, PROJECT, TINY, edit_params

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PARAMS = "base:\n  seed: 0\ntrain:\n  lr: 0.001\n  epochs: 2\n"
ENV_OWNED = (
    "MLFLOW_TRACKING_URI",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    DB_ENV,
    OFFLINE_ENV,
    "RECYCLELORA_PARENT_RUN_ID",
    TABLE_ENV,
)

# A stage process: argv = stage, experiment, "fail"|"-", seconds to stay open.
STAGE = """
import sys, time
from pathlib import Path
import mlflow, yaml
from pipeline.tracking import log_small_artifacts, stage_run

stage, experiment, fail, hold = sys.argv[1:5]
params = yaml.safe_load(Path("params.yaml").read_text())
with stage_run(stage, params, repo_root=Path.cwd(), experiment=experiment):
    for step in range(3):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    Path("small.txt").write_text("x" * 10)
    Path("big.bin").write_bytes(bytes(100))
    log_small_artifacts(["small.txt", "big.bin"], max_bytes=64)
    Path("tables", "sub").mkdir(parents=True, exist_ok=True)
    Path("tables", "iou.csv").write_text("class,iou")
    Path("tables", "sub", "huge.bin").write_bytes(bytes(100))
    log_small_artifacts(["tables"], max_bytes=64, artifact_path="eval")
    time.sleep(float(hold))
    if fail == "fail":
        raise RuntimeError("stage broke on purpose")
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_OWNED:
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_mlflow_server(root: Path, port: int) -> Iterator[str]:
    """A real ``mlflow server`` on ``port`` with its SQLite store and artifacts in ``root`` (kept after it
    stops, for a restart); its process group is stopped after the block."""
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "ab") as log:
        server = subprocess.Popen(
            command, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while not mlflow_server_answers(uri, timeout=1.0):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
                time.sleep(0.3)
            yield uri
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is already gone
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real ``mlflow server`` (SQLite backend) for the module."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), closed_port()) as uri:
        yield uri


def make_repo(path: Path) -> Path:
    """A Git repository with one commit, an (empty) ``.dvc/`` and ``params.yaml``."""
    (path / ".dvc").mkdir(parents=True)
    (path / "params.yaml").write_text(PARAMS)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-q", "-m", "init"]):
        subprocess.run(git + args, cwd=path, check=True, capture_output=True)
    return path


def head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def run_stage(
    repo: Path,
    env: dict[str, str],
    stage: str,
    experiment: str,
    *,
    fail: bool = False,
    hold: float = 0.0,
) -> subprocess.CompletedProcess[str]:
    """Run one stage as its own Python process in ``repo``, like ``dvc repro`` does."""
    child_env = {k: v for k, v in os.environ.items() if k not in ENV_OWNED}
    child_env |= {"PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"} | env
    args = [stage, experiment, "fail" if fail else "-", str(hold)]
    return subprocess.run(
        [sys.executable, "-c", STAGE, *args],
        check=False,
        cwd=repo,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def pipeline_runs(client: MlflowClient, experiment: str) -> tuple[list[Run], list[Run]]:
    """(parents, children) of ``experiment``, oldest first."""
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    return parents, children


# Store resolution and reachability (no server).


def test_default_store_is_absolute_sqlite_at_main_root_from_exp_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = tmp_path / "repo"
    (main / ".dvc").mkdir(parents=True)
    workspace = main / ".dvc" / "tmp" / "exps" / "tmpab12cd34"
    (workspace / ".dvc").mkdir(parents=True)
    expected = f"sqlite:///{main.resolve()}/mlflow.db"
    assert expected.startswith("sqlite:////")
    assert tracking_uri(workspace) == expected
    assert tracking_uri(main / "src") == expected
    monkeypatch.chdir(workspace)
    assert tracking_uri(".") == expected


def test_store_outside_a_dvc_repo_or_relative_override_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="dvc init"):
        tracking_uri(tmp_path)
    monkeypatch.setenv(DB_ENV, "mlflow.db")
    with pytest.raises(ValueError, match="absolute"):
        tracking_uri(tmp_path)
    monkeypatch.setenv(DB_ENV, str(tmp_path / "shared" / "runs.db"))
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/shared/runs.db"


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns", "sqlite:///mlflow.db", "sqlite://"])
def test_file_store_and_relative_sqlite_uris_are_refused(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ValueError, match="sqlite:////absolute"):
        tracking_uri(tmp_path)


def test_unreachable_server_fails_fast_and_offline_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".dvc").mkdir()
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(TrackingServerUnreachable) as error:
        tracking_uri(tmp_path)
    assert time.monotonic() - start < 10
    assert uri in str(error.value) and OFFLINE_ENV in str(error.value)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    local = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.warns(RuntimeWarning, match=re.escape(local)):
        assert tracking_uri(tmp_path) == local


SEARCH = "/api/2.0/mlflow/experiments/search"


@pytest.mark.parametrize(
    ("replies", "accepted"),
    [
        ({"/": (200, "text/html", b"<html>a web app</html>")}, False),
        ({SEARCH: (200, "text/html", b"<!doctype html><html>login</html>")}, False),
        ({SEARCH: (200, "application/json", b"[1, 2]")}, False),
        ({SEARCH: (200, "application/json", b'{"experiments": []}')}, True),
        ({SEARCH: (401, "text/plain", b"You are not authenticated.")}, True),
    ],
)
def test_a_server_that_is_not_mlflow_is_refused_in_one_line(
    replies: dict, accepted: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".dvc").mkdir()
    with serve_replies(replies) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        if accepted:
            assert tracking_uri(tmp_path) == uri
            return
        with pytest.raises(NotAnMlflowServer) as error:
            tracking_uri(tmp_path)
    message = str(error.value)
    assert "\n" not in message and uri in message and "not an MLflow tracking server" in message


def test_flatten_params_dots_nested_keys_and_respects_mlflow_limits() -> None:
    flat = flatten_params({"train": {"lr": 1e-4, "sizes": [512, 512]}, "seed": 0, "note": "x" * 7000})
    assert flat["train.lr"] == "0.0001" and flat["train.sizes"] == "[512, 512]" and flat["seed"] == "0"
    assert len(flat["note"]) == MAX_PARAM_VAL_LENGTH and flat["note"].endswith("[truncated]")
    with pytest.raises(ValueError, match="shorten"):
        flatten_params({"k" * 200: {"k" * 60: 1}})


def test_pipeline_key_follows_commit_experiment_and_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    key = pipeline_key(repo)
    assert pipeline_key(repo) == key
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    with_exp = pipeline_key(repo)
    assert with_exp != key
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert pipeline_key(repo) != with_exp
    (repo / "params.yaml").write_text(PARAMS.replace("0.001", "0.002"))
    assert pipeline_key(repo) not in (key, with_exp)
    (repo / "params.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="params.yaml"):
        pipeline_key(repo)


# Stage processes against a real server.


@pytest.mark.slow
def test_stage_processes_share_one_parent(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "DVC_EXP_NAME": "exp-shared"}
    for stage, hold in (("prepare", 0.0), ("train", 0.5)):
        done = run_stage(repo, env, stage, "shared", hold=hold)
        assert done.returncode == 0, done.stderr
    client = MlflowClient(mlflow_server)
    parents, children = pipeline_runs(client, "shared")
    assert len(parents) == 1 and [child.info.run_name for child in children] == ["prepare", "train"]
    parent = parents[0]
    monkeypatch.setenv("DVC_EXP_NAME", "exp-shared")
    assert parent.data.tags[PIPELINE_KEY_TAG] == pipeline_key(repo)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "exp-shared"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["params.yaml"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["stage"] == child.info.run_name
        assert child.data.tags["mlflow.source.git.commit"] == head(repo)
        assert child.data.tags["dvc_exp"] == "exp-shared"
        assert child.data.params["train.lr"] == "0.001" and child.data.params["base.seed"] == "0"
        history = client.get_metric_history(child.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert artifacts == {"params.yaml", "small.txt", "eval"}
        assert {a.path for a in client.list_artifacts(child.info.run_id, "eval/tables")} == {
            "eval/tables/iou.csv"
        }
        kept = "big.bin (100 bytes)\ntables/sub/huge.bin (100 bytes)"
        assert child.data.tags[KEPT_IN_DVC_TAG] == kept
    assert any(name.startswith("system/") for name in children[1].data.metrics)


@pytest.mark.slow
def test_failed_stage_is_rerun_under_the_same_parent_until_params_change(
    mlflow_server: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    failed = run_stage(repo, env, "train", "rerun", fail=True)
    assert failed.returncode != 0 and "stage broke on purpose" in failed.stderr
    client = MlflowClient(mlflow_server)
    (parent,), (child,) = pipeline_runs(client, "rerun")
    assert child.info.status == "FAILED" and parent.info.status == "FAILED"
    assert "dvc_exp" not in child.data.tags
    done = run_stage(repo, env, "train", "rerun")
    assert done.returncode == 0, done.stderr
    parents, children = pipeline_runs(client, "rerun")
    assert [p.info.run_id for p in parents] == [parent.info.run_id] and parents[0].info.status == "FINISHED"
    assert [c.info.status for c in children] == ["FAILED", "FINISHED"]
    assert children[1].data.tags["mlflow.parentRunId"] == parent.info.run_id
    (repo / "params.yaml").write_text(PARAMS.replace("0.001", "0.002"))
    done = run_stage(repo, env, "train", "rerun")
    assert done.returncode == 0, done.stderr
    parents, children = pipeline_runs(client, "rerun")
    assert (
        len(parents) == 2 and parents[0].data.tags[PIPELINE_KEY_TAG] != parents[1].data.tags[PIPELINE_KEY_TAG]
    )
    assert children[2].data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert [c.data.params["train.lr"] for c in children] == ["0.001", "0.001", "0.002"]


@pytest.mark.slow
def test_offline_fallback_records_into_local_store_with_artifacts_beside_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}", OFFLINE_ENV: "1"}
    done = run_stage(repo, env, "prepare", "offline")
    assert done.returncode == 0, done.stderr
    local = f"sqlite:///{tmp_path}/mlflow.db"
    assert local in done.stderr
    client = MlflowClient(local)
    (parent,), (child,) = pipeline_runs(client, "offline")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.info.status == "FINISHED"
    assert client.get_experiment_by_name("offline").artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert (tmp_path / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


# The tiny pipeline against a real server: what the MLflow UI shows.

#: Initialiser -> the parent run name of the tiny pipeline (ranks 2 + 1, ViT-S/14 layout, seed 0).
UI_RUNS = {"rrqr": "rrqr-2+1-vits14-s0", "lora": "lora-3-vits14-s0"}
UI_TABLE = "cmp-ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tiny_pipelines(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny pipeline (no export) of each initialiser of :data:`UI_RUNS`, run in this process against
    ``mlflow_server`` with ``RECYCLELORA_TABLE`` set; their workspaces."""
    workspaces = {}
    for init in UI_RUNS:
        root = workspaces[init] = tmp_path_factory.mktemp(init)
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(PROJECT / name, root / name)
        (root / ".dvc").mkdir()
        apply_preset(root / "params.yaml", str(TINY))
        edit_params(root / "params.yaml", "model.adapter.init", init)
        with pytest.MonkeyPatch.context() as patch:
            for name in ENV_OWNED:
                patch.delenv(name, raising=False)
            patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
            patch.setenv(TABLE_ENV, UI_TABLE)
            patch.chdir(root)
            params, backbone, init_dir = root / "params.yaml", Path("models/backbone"), Path("models/init")
            trained, merged = Path("models/train"), Path("models/merged.safetensors")
            stages.run_data(params, Path("data/prepared"), CHECKSUMS)
            stages.run_weights(params, backbone)
            stages.run_init(params, backbone, init_dir, progress=False)
            stages.run_train(params, backbone, init_dir, trained, Path("metrics/train.json"), progress=False)
            stages.run_merge(params, trained / "model.safetensors", merged)
            stages.run_evaluate(
                params, merged, Path("reports/eval"), Path("metrics/eval.json"), progress=False
            )
            stages.run_analyze(
                params, trained / "model.safetensors", Path("reports/analysis"), Path("metrics/analysis.json")
            )
    return workspaces


def tiny_parents(client: MlflowClient) -> dict[str, Run]:
    """The parent runs of :func:`tiny_pipelines` by name."""
    parents, _ = pipeline_runs(client, "recyclelora")
    return {run.info.run_name: run for run in parents}


@pytest.mark.slow
def test_parent_run_is_named_by_method_with_all_params_and_headline_metrics(
    mlflow_server: str, tiny_pipelines: dict[str, Path]
) -> None:
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("recyclelora")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    parents = tiny_parents(client)
    assert sorted(parents) == sorted(UI_RUNS.values())
    for init, root in tiny_pipelines.items():
        parent = parents[UI_RUNS[init]]
        assert parent.info.status == "FINISHED" and parent.data.tags[TABLE_TAG] == UI_TABLE
        assert parent.data.params == flatten_params(read_yaml(root / "params.yaml"))
        scores = json.loads((root / "metrics/eval.json").read_text())
        train = json.loads((root / "metrics/train.json").read_text())
        analysis = json.loads((root / "metrics/analysis.json").read_text())
        expected = {
            "mean_mIoU": scores.pop("mean_mIoU"),
            **{f"mIoU/{target}": score["mIoU"] for target, score in scores.items()},
            **{
                key: train[key] for key in ("val_mIoU", "trainable_parameters/total", "iterations_per_second")
            },
            **{
                key: analysis[key]
                for key in ("efficiency_main", "efficiency_sub")
                if analysis.get(key) is not None
            },
        }
        assert parent.data.metrics == pytest.approx(expected)
        # the children keep the detail, and are tagged with the table too
        children = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        assert len(children) == 7 and all(child.data.tags[TABLE_TAG] == UI_TABLE for child in children)
        (train_run,) = [child for child in children if child.info.run_name == "train"]
        assert "loss" in train_run.data.metrics and "loss" not in parent.data.metrics


def test_run_name_gives_method_effective_ranks_backbone_and_seed() -> None:
    params = read_yaml(PROJECT / "params.yaml")
    assert params["model"]["tuning"] == "adapters" and readable_run_name(params) == "rrqr-16+4-vits14-s0"
    params["model"]["backbone"]["name"] = "vit_large_patch14_dinov2"
    params["base"]["seed"] = 2
    for tuning, init, name in [
        ("frozen", "rrqr", "frozen-vitl14-s2"),
        ("full", "rrqr", "full-vitl14-s2"),
        ("adapters", "lora", "lora-20-vitl14-s2"),  # one adapter of rank main + sub
        ("adapters", "rrqr-sub", "rrqr-sub-4-vitl14-s2"),
    ]:
        params["model"]["tuning"], params["model"]["adapter"]["init"] = tuning, init
        assert readable_run_name(params) == name
    assert backbone_label("vit_base_patch16_224") == "vitb16" and backbone_label("resnet50") == "resnet50"
    assert readable_run_name({"base": {"seed": 0}}) is None


def ui_metric(value: float) -> str:
    """A metric as MLflow's UI shows it (``Utils.formatMetric``) for values in [0.001, 10) or 0."""
    return "0" if value == 0 else f"{round(value, 3):g}"


def page_text(url: str) -> str:
    """The visible text of an MLflow UI page after headless Chromium rendered it."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,2400"]
    command += ["--virtual-time-budget=30000", "--dump-dom", url]
    dom = subprocess.run(command, check=True, capture_output=True, text=True, timeout=240).stdout
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium for a headless browser (apt-get install chromium)"
)
def test_mlflow_ui_lists_runs_by_method_and_compares_their_mean_miou(
    mlflow_server: str, tiny_pipelines: dict[str, Path]
) -> None:
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name("recyclelora").experiment_id
    runs = page_text(f"{mlflow_server}/#/experiments/{experiment_id}?workflowType=machine_learning")
    # the runs table, not the GenAI overview
    assert "Run Name" in runs and all(name in runs for name in UI_RUNS.values()), runs[:2000]

    parents = list(tiny_parents(client).values())
    ids = json.dumps([run.info.run_id for run in parents], separators=(",", ":"))
    compare = page_text(f'{mlflow_server}/#/compare-runs?runs={ids}&experiments=["{experiment_id}"]')
    metrics = compare[compare.index("Metrics Show diff only") :]
    assert all(run.info.run_name in compare for run in parents), compare[:2000]
    assert "mean_mIoU" in metrics, metrics[:2000]
    assert all(ui_metric(run.data.metrics["mean_mIoU"]) in metrics for run in parents), metrics[:2000]


# MLflow's usage telemetry

TELEMETRY_PROBE = """
import os
import pipeline.tracking
from mlflow.telemetry.client import get_telemetry_client
print(os.environ.get("MLFLOW_DISABLE_TELEMETRY"), "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ, get_telemetry_client())
"""
#: Variables that make MLflow treat the process as CI or a test, with telemetry off whatever we do.
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "PYTEST_CURRENT_TEST", "GITLAB_CI", "BUILDKITE", "TF_BUILD")


@pytest.mark.parametrize(("setting", "expected"), [(None, "true False None"), ("false", "false")])
def test_stages_turn_mlflow_telemetry_off_unless_the_user_set_it(setting: str | None, expected: str) -> None:
    """Its client, started by ``import mlflow``, removes a variable from ``os.environ`` in a background thread
    while a stage's requests iterate it; importing the tracking module stops it and removes the variable."""
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES and k != "MLFLOW_DISABLE_TELEMETRY"}
    if setting is not None:
        env["MLFLOW_DISABLE_TELEMETRY"] = setting
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    done = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().startswith(expected), done.stdout


# A lost server, stop signals, a resumed child (real servers, real signals, real processes).

# A stage process logging one metric per step through ``log_numbers``: argv = stage, experiment, first step,
# end step, and the steps (comma-separated) at which it writes ``ready-<step>`` and waits for ``go-<step>``;
# ``ended`` gets the time its runs were ended. RESUME=1 continues the unfinished child;
# CTRL_C_AT_END=1 sends it two SIGINTs as it copies the headline metrics. Errors exit as the CLI's (one line,
# 128 + signum when stopped).
STEPS = """
import os, sys, time
from pathlib import Path
import typer, yaml
from pipeline.stages._common import log_numbers
from pipeline.tracking import stage_run
from recyclelora.cli.common import user_errors

stage, experiment, first, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pauses = {int(step) for step in sys.argv[5].split(",") if step}
params = yaml.safe_load(Path("params.yaml").read_text())
resume = os.environ.get("RESUME") == "1"
if os.environ.get("CTRL_C_AT_END") == "1":  # two Ctrl-C as the runs are being ended
    import signal
    import pipeline.tracking as tracking

    copy = tracking._copy_headline_metrics

    def interrupted_copy(*args):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        copy(*args)

    tracking._copy_headline_metrics = interrupted_copy
try:
    with user_errors(), stage_run(
        stage, params, repo_root=Path.cwd(), experiment=experiment, resume_child=resume
    ):
        for step in range(first, end):
            if step in pauses:
                Path(f"ready-{step}").touch()
                while not Path(f"go-{step}").exists():
                    time.sleep(0.05)
            log_numbers({"loss": 1.0 / (step + 1), "skipped": None}, step)
            time.sleep(0.05)
    Path("ended").write_text(str(time.time()))
except typer.Exit as stop:
    sys.exit(stop.exit_code)
"""


def start_steps(
    repo: Path, uri: str, experiment: str, first: int, end: int, pauses: tuple[int, ...] = (), **env: str
) -> subprocess.Popen[str]:
    """Start a :data:`STEPS` stage process in ``repo`` against ``uri``."""
    child_env = {k: v for k, v in os.environ.items() if k not in ENV_OWNED}
    child_env |= {"PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_TRACKING_URI": uri} | env
    args = ["train", experiment, str(first), str(end), ",".join(map(str, pauses))]
    command = [sys.executable, "-c", STEPS, *args]
    return subprocess.Popen(
        command, cwd=repo, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def losses(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))


def sync(repo: Path) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline sync`` for the workspace ``repo``."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OWNED} | {"PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "pipeline", "sync", "--params", str(repo / "params.yaml")]
    return subprocess.run(
        command, check=False, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def repo_and_server_store(tmp_path: Path) -> tuple[Path, Path, int]:
    """A repository, a folder for a server's store and a free port: for a server stopped and started again."""
    (tmp_path / "server").mkdir()
    return make_repo(tmp_path / "repo"), tmp_path / "server", closed_port()


@pytest.mark.slow
def test_a_server_lost_mid_stage_costs_seconds_and_sync_sends_what_was_kept(tmp_path: Path) -> None:
    repo, store, port = repo_and_server_store(tmp_path)
    with running_mlflow_server(store, port) as uri:
        stage = start_steps(repo, uri, "lost", 0, 40, (10,))
        wait_for(repo / "ready-10", stage)
    # the server is gone (its process group stopped); the stage logs 30 more steps (1.5 s of sleep, about 3 s
    # here with the server up) and ends its runs: MLflow's own retries would take 4 minutes a call
    start = time.time()
    (repo / "go-10").touch()
    _, err = stage.communicate(timeout=300)
    assert stage.returncode == 0, err
    assert float((repo / "ended").read_text()) - start < 10
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and f"{uri} stopped answering" in warnings[0], err
    assert "python -m pipeline sync" in warnings[1] and "Traceback" not in err, err
    spool = repo / "mlflow-spool" / "records.jsonl"
    assert spool.stat().st_size > 0

    not_yet = sync(repo)  # the server is still down: one line, nothing lost
    assert not_yet.returncode == 1 and not_yet.stderr.count("\n") == 1 and uri in not_yet.stderr, (
        not_yet.stderr
    )
    with running_mlflow_server(store, port):
        done = sync(repo)
        assert done.returncode == 0, done.stderr
        assert spool.read_text() == ""
        client = MlflowClient(uri)
        (parent,), (child,) = pipeline_runs(client, "lost")
        assert losses(client, child.info.run_id) == [(step, 1.0 / (step + 1)) for step in range(40)]
        assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"
        assert "skipped" not in child.data.metrics


@pytest.mark.slow
def test_sigterm_ends_child_and_parent_killed_and_a_resumed_child_continues(
    mlflow_server: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path)
    stage = start_steps(repo, mlflow_server, "killed", 0, 10, (4,))
    wait_for(repo / "ready-4", stage)
    stage.send_signal(signal.SIGTERM)
    _, err = stage.communicate(timeout=60)
    assert stage.returncode == 128 + signal.SIGTERM == 143, err
    assert err.splitlines()[-1] == "error: stopped by SIGTERM" and "Traceback" not in err, err
    client = MlflowClient(mlflow_server)
    (parent,), (child,) = pipeline_runs(client, "killed")
    assert child.info.status == "KILLED" and parent.info.status == "KILLED"

    resumed = start_steps(repo, mlflow_server, "killed", 4, 8, RESUME="1")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    (parent,), children = pipeline_runs(client, "killed")
    assert [c.info.run_id for c in children] == [child.info.run_id]
    assert children[0].info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert losses(client, child.info.run_id) == [(step, 1.0 / (step + 1)) for step in range(8)]

    fresh = start_steps(repo, mlflow_server, "killed", 0, 2, RESUME="1")  # the child finished: a new one
    assert fresh.wait(timeout=120) == 0
    assert len(pipeline_runs(client, "killed")[1]) == 2


@pytest.mark.slow
def test_a_server_back_mid_stage_gets_what_was_kept_at_once(tmp_path: Path) -> None:
    repo, store, port = repo_and_server_store(tmp_path)
    with running_mlflow_server(store, port) as uri:
        stage = start_steps(repo, uri, "back", 0, 30, (5, 15), RECYCLELORA_MLFLOW_RETRY_SECONDS="0.2")
        wait_for(repo / "ready-5", stage)
    (repo / "go-5").touch()
    wait_for(repo / "ready-15", stage)  # steps 5 to 14 went to the spool
    with running_mlflow_server(store, port):
        (repo / "go-15").touch()
        _, err = stage.communicate(timeout=300)
        assert stage.returncode == 0, err
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 2 and f"{uri} answers again" in warnings[1], err
        assert (repo / "mlflow-spool" / "records.jsonl").read_text() == ""
        client = MlflowClient(uri)
        (parent,), (child,) = pipeline_runs(client, "back")
        assert losses(client, child.info.run_id) == [(step, 1.0 / (step + 1)) for step in range(30)]
        assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"  # as its last stage ended


def test_stages_bound_mlflow_retries_to_seconds_and_tell_a_silent_server_from_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in HTTP_RETRY_DEFAULTS:  # set, then removed: restored to absent after the test
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    bound_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's
    assert (
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        == HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    )

    def log_to(uri: str) -> MlflowException:
        store = RestStore(functools.partial(get_default_host_creds, uri))
        with pytest.raises(MlflowException) as error:
            store.log_batch("0" * 32, [Metric("loss", 1.0, 0, 0)], [], [])
        return error.value

    start = time.monotonic()
    silent = log_to(f"http://127.0.0.1:{closed_port()}")
    assert time.monotonic() - start < 6  # MLflow's defaults: about 4 minutes
    assert unreachable(silent) == "ConnectionError: [Errno 111] Connection refused"
    with serve_replies({}) as uri:  # answers every POST with 501
        assert unreachable(log_to(uri)) is None

    assert retry_seconds() == 30
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv(RETRY_ENV, bad)
        with pytest.raises(ValueError, match=RETRY_ENV):
            retry_seconds()


def test_spool_reads_whole_lines_and_groups_consecutive_batches_of_a_run(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    batch = {"uri": "http://a", "op": "batch", "params": [], "tags": []}
    spool.append(batch | {"run_id": "r1", "metrics": [["loss", 1.0, 5, 0]]})
    spool.append(batch | {"run_id": "r1", "metrics": [["loss", 0.5, 6, 1]]})
    spool.append({"uri": "http://a", "op": "update", "run_id": "r1", "status": "FINISHED"})
    spool.append(batch | {"run_id": "r2", "metrics": []})
    with spool.file.open("a") as cut:  # a crash in the middle of a line
        cut.write('{"uri": "http://a", "op": "ba')
    records = spool.records()
    assert [record["run_id"] for record in records] == ["r1", "r1", "r1", "r2"]
    assert [len(group) for group in Spool._groups(records)] == [2, 1, 1]
    sent, lost = spool.send(lambda uri: None)  # no server asked: everything kept
    assert (sent, lost) == (0, set()) and len(spool.records()) == 4


@pytest.mark.slow
def test_ctrl_c_while_the_runs_are_ended_does_not_cut_the_ending(mlflow_server: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    stage = start_steps(repo, mlflow_server, "ctrl-c", 0, 3, CTRL_C_AT_END="1")
    _, err = stage.communicate(timeout=120)
    assert stage.returncode == 128 + signal.SIGINT, err
    assert err.splitlines()[-1].startswith(
        "error: stopped by SIGINT while the stage ended its MLflow runs"
    ), err
    client = MlflowClient(mlflow_server)
    (parent,), (child,) = pipeline_runs(client, "ctrl-c")
    assert child.info.status == "KILLED" and parent.info.status == "KILLED"
    assert losses(client, child.info.run_id) == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
