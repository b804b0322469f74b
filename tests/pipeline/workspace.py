"""A DVC workspace for stage tests: the project's dvc.yaml and params.yaml, its own MLflow store, no DVC or
MLflow state of the process that runs the tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
#: Environment of an enclosing `dvc exp run` or pipeline that a test's stages must not join.
RUN_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RECYCLELORA_PARENT_RUN_ID", "RECYCLELORA_MLFLOW_DB")


def make_workspace(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy dvc.yaml and params.yaml into ``root``, make it a DVC workspace and point MLflow at its own store."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, root / name)
    (root / ".dvc").mkdir()
    for name in RUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    return root
