"""dvc.yaml is the one list of each stage's params: what its MLflow child run records."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.dvcfile import stage_params
from pipeline.stages._common import open_stage
from pipeline.tracking import flatten_params
from recyclelora.config import read_yaml
from tests.pipeline.workspace import make_workspace


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project's dvc.yaml and params.yaml in a DVC workspace with its own MLflow store."""
    return make_workspace(tmp_path, monkeypatch)


def test_each_stage_logs_the_params_dvc_yaml_lists(workspace: Path) -> None:
    """Every stage's child run records exactly the params.yaml values of its dvc.yaml ``params:`` keys."""
    stages = read_yaml(workspace / "dvc.yaml")["stages"]
    raw = read_yaml(workspace / "params.yaml")
    client = MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    for stage, definition in stages.items():
        with open_stage(stage, workspace / "params.yaml"):
            run_id = mlflow.active_run().info.run_id
        listed = {}
        for key in definition.get("params", []):
            value = raw
            for part in key.split("."):
                value = value[part]
            listed[key] = value
        assert client.get_run(run_id).data.params == flatten_params(listed), stage
    assert stage_params("init", workspace / "params.yaml")[0] == "model.backbone.name"
    assert stage_params("merge", workspace / "params.yaml") == ()


def test_a_stage_outside_a_dvc_workspace_or_dvc_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dvc.yaml does not exist"):
        stage_params("data", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  data:\n    cmd: x\n    params: [datasets, {other.yaml: [a]}]\n"
    )
    with pytest.raises(ValueError, match=r"has no stage 'train': its stages are \['data'\]"):
        stage_params("train", tmp_path / "params.yaml")
    with pytest.raises(ValueError, match="lists params of another file"):
        stage_params("data", tmp_path / "params.yaml")
