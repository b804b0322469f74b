"""A DVC workspace for stage tests: the project's dvc.yaml and params.yaml, its own MLflow store, no DVC or
MLflow state of the process that runs the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.presets import apply_preset

PROJECT = Path(__file__).resolve().parents[2]
#: Environment of an enclosing `dvc exp run` or pipeline that a test's stages must not join.
RUN_ENV = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RECYCLELORA_PARENT_RUN_ID", "RECYCLELORA_MLFLOW_DB")
TINY = Path(__file__).with_name("tiny_params.yaml")
#: What a tiny repository needs: the pipeline definition and every code dependency of dvc.yaml.
COPIED = (
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".dvc",
    "recyclelora",
    "pipeline",
    "data",
    "models",
    "reports",
)
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]


def make_workspace(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy dvc.yaml and params.yaml into ``root``, make it a DVC workspace and point MLflow at its own store."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, root / name)
    (root / ".dvc").mkdir()
    for name in RUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    return root


def tiny_repo(repo: Path) -> Path:
    """A Git repository at ``repo`` (created) with one commit of the project's pipeline and code on the tiny
    params (``tiny_params.yaml``), without outputs, DVC cache or DVC state."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mlflow.db", "mlartifacts")
    repo.mkdir(parents=True)
    for name in COPIED:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=ignore)
        else:
            shutil.copy(source, repo / name)
    for folder in ("data", "models", "reports"):  # only the .gitignore files DVC maintains, no outputs
        for entry in (repo / folder).iterdir():
            if entry.name != ".gitignore":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "tmp", ignore_errors=True)
    (repo / ".dvc" / "config.local").unlink(missing_ok=True)
    apply_preset(repo / "params.yaml", str(TINY))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tiny pipeline"]):
        subprocess.run(
            GIT + args, cwd=repo, check=True, capture_output=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"}
        )
    return repo
