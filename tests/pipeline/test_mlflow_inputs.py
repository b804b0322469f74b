"""A stage's MLflow run: the manifests it reads as MLflow datasets, MLflow's source tags, the experiment's
description; dataset inputs spooled while the server is lost."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.credentials import get_default_host_creds

from pipeline.mlflow_inputs import manifest_input, stage_manifests
from pipeline.tracking import EXPERIMENT_NOTE, HTTP_RETRY_DEFAULTS, Spool, _replay, _SpoolingStore, stage_run
from tests.pipeline.test_tracking import ENV_OWNED, closed_port, head, make_repo, pipeline_runs

TRAIN, VAL = "data/prepared/src_train.parquet", "data/prepared/src_val.parquet"
TARGETS = ["data/prepared/fog_val.parquet", "data/prepared/night_val.parquet"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ENV_OWNED:
        monkeypatch.delenv(name, raising=False)
    yield
    mlflow.set_tracking_uri(None)  # stage_run sets the process's store


def write_manifest(repo: Path, path: str, rows: int) -> None:
    """A manifest as stage ``data`` writes it: file paths and sizes, no images."""
    frame = pd.DataFrame(
        {"image": [f"img/{i}.png" for i in range(rows)], "label": [f"lbl/{i}.png" for i in range(rows)]}
    )
    frame["height"] = frame["width"] = 14
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(repo / path)


def md5_8(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()[:8]


def inputs_of(run_id: str, client: MlflowClient) -> dict[str, tuple[str, dict, str, dict]]:
    """``{name: (digest, source, context, profile)}`` of a run's dataset inputs."""
    found = client.get_run(run_id).inputs.dataset_inputs
    return {
        item.dataset.name: (
            item.dataset.digest,
            json.loads(item.dataset.source),
            {tag.key: tag.value for tag in item.tags}["mlflow.data.context"],
            json.loads(item.dataset.profile),
        )
        for item in found
    }


def test_stage_runs_list_their_manifests_as_datasets_and_carry_mlflow_source_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    for path, rows in ((TRAIN, 5), (VAL, 2), (TARGETS[0], 3), (TARGETS[1], 4)):
        write_manifest(repo, path, rows)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-data")
    # what open_stage passes: the stage's dvc.yaml params sections, dotted or nested
    stage_params = {
        "train": {"base.seed": 0, "data": {"train": [TRAIN], "val": [VAL], "subset": {}}},
        "evaluate": {"eval": {"targets": TARGETS}, "data.val_transform": {}},
        "export": {"export": {}, "eval.targets": TARGETS[:1]},
        "merge": {},
    }
    for stage, params in stage_params.items():
        with stage_run(stage, params, repo_root=repo, experiment="data"):
            pass
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    (parent,), children = pipeline_runs(client, "data")
    assert [child.info.run_name for child in children] == list(stage_params)
    train, evaluate, export, merge = (child.info.run_id for child in children)

    def expected(path: str, context: str, rows: int) -> tuple[str, dict, str, dict]:
        return md5_8(repo / path), {"uri": path}, context, {"num_rows": rows}

    assert inputs_of(train, client) == {
        "src_train": expected(TRAIN, "training", 5),
        "src_val": expected(VAL, "validation", 2),
    }
    assert inputs_of(evaluate, client) == {
        "fog_val": expected(TARGETS[0], "evaluation", 3),
        "night_val": expected(TARGETS[1], "evaluation", 4),
    }
    assert inputs_of(export, client) == {"fog_val": expected(TARGETS[0], "evaluation", 3)}
    assert inputs_of(merge, client) == {}
    schema = json.loads(client.get_run(train).inputs.dataset_inputs[0].dataset.schema)["mlflow_colspec"]
    assert [column["name"] for column in schema] == ["image", "label", "height", "width"]

    for run, name in [(parent, "dvc.yaml")] + [
        (child, f"dvc.yaml:{child.info.run_name}") for child in children
    ]:
        tags = run.data.tags
        assert tags["mlflow.source.git.commit"] == head(repo) and "git_commit" not in tags
        assert tags["mlflow.source.name"] == name and tags["mlflow.source.type"] == "LOCAL"
        assert tags["dvc_exp"] == "exp-data"
    experiment = client.get_experiment_by_name("data")
    assert experiment.tags["mlflow.note.content"] == EXPERIMENT_NOTE


def test_stage_manifests_follow_the_params_keys_in_order() -> None:
    params = {
        "data": {"train": ["a.parquet", "b.parquet"], "val": ["v.parquet"]},
        "eval.targets": ["t.parquet"],
    }
    assert stage_manifests(params) == [
        ("a.parquet", "training"),
        ("b.parquet", "training"),
        ("v.parquet", "validation"),
        ("t.parquet", "evaluation"),
    ]
    assert stage_manifests({"datasets": {"synth": {}}, "model": {}}) == []


class _Recorder(RestStore):
    """A REST store that records the requests it would send."""

    def __init__(self) -> None:
        super().__init__(functools.partial(get_default_host_creds, "http://127.0.0.1:1"))
        self.sent: list[tuple[str, str]] = []

    def _call_endpoint(
        self, api: type, json_body: str | None = None, *args: object, **kwargs: object
    ) -> None:
        self.sent.append((api.__name__, json_body))


def test_dataset_inputs_logged_while_the_server_is_lost_are_spooled_and_sent_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in HTTP_RETRY_DEFAULTS.items():  # seconds on a closed port, not minutes
        monkeypatch.setenv(name, value)
    write_manifest(tmp_path, TRAIN, 3)
    dataset = manifest_input(tmp_path / TRAIN, TRAIN, "training")
    uri = f"http://127.0.0.1:{closed_port()}"
    spool = Spool(tmp_path / "spool")
    store = _SpoolingStore(uri, spool, every=3600.0)
    try:
        store.log_inputs("r1", datasets=[dataset])
    finally:
        store.close()
    (record,) = spool.records()
    assert record["op"] == "inputs" and record["uri"] == uri and store.spooled == 1
    replayed, direct = _Recorder(), _Recorder()
    _replay(replayed, uri, [record], spool.folder)
    RestStore.log_inputs(direct, "r1", [dataset])
    assert replayed.sent == direct.sent and replayed.sent[0][0] == "LogInputs"


def test_a_dataset_another_run_inserts_at_the_same_moment_is_logged_on_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sweep jobs logging the same new dataset at once: MLflow's server answers one of them 400 (its SQL insert
    hits the dataset's unique key, as seen in CI). The stage tries again and logs; another refusal is raised."""
    from mlflow.exceptions import MlflowException, RestException

    from pipeline import mlflow_inputs

    manifest = tmp_path / "data" / "synth_src_train.parquet"
    manifest.parent.mkdir()
    pd.DataFrame({"image": ["a.png"]}).to_parquet(manifest)
    params = {"data": {"train": ["data/synth_src_train.parquet"], "val": []}}
    collision = RestException({
        "error_code": "BAD_REQUEST",
        "message": "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
        "datasets.digest [SQL: INSERT INTO datasets (dataset_uuid, ...) VALUES (?, ...)]",
    })  # fmt: skip
    calls: list[str] = []

    def log_inputs(self: MlflowClient, run_id: str, datasets: list) -> None:
        calls.append(run_id)
        if len(calls) == 1:
            raise collision

    monkeypatch.setattr(MlflowClient, "log_inputs", log_inputs)
    monkeypatch.setattr(mlflow_inputs.time, "sleep", lambda seconds: None)
    mlflow_inputs.log_stage_inputs("run-1", params, tmp_path)
    assert calls == ["run-1", "run-1"]

    def refuse(self: MlflowClient, run_id: str, datasets: list) -> None:
        calls.append(run_id)
        raise MlflowException("Run 'run-2' not found", error_code="RESOURCE_DOES_NOT_EXIST")

    calls.clear()
    monkeypatch.setattr(MlflowClient, "log_inputs", refuse)
    with pytest.raises(MlflowException, match="not found"):
        mlflow_inputs.log_stage_inputs("run-2", params, tmp_path)
    assert calls == ["run-2"]
