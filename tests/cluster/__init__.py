"""Sweeps on a real SLURM (``.ci/slurm-up.sh`` starts a one-node one; CI's slow lane has it): tiny experiments
as SLURM jobs through submitit beside an MLflow server on 127.0.0.1. What the tests share: whether SLURM is up,
their marks, the environment a sweep command runs in, the jobs' log tails and ``dvc exp show``'s rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from pipeline.sweep.slurm import stderr_log
from tests.pipeline.workspace import RUN_ENV, tiny_repo


def slurm_is_up() -> bool:
    if not (os.environ.get("SLURM_CONF") and shutil.which("sbatch") and shutil.which("sinfo")):
        return False
    done = subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False, timeout=30
    )
    return done.returncode == 0 and any(s.strip("*~#") in ("idle", "mixed") for s in done.stdout.split())


#: Every cluster test's marks: the slow lane, and skipped unless a SLURM is up.
SLURM_TEST = [
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),
    pytest.mark.skipif(not slurm_is_up(), reason='no SLURM up: run `eval "$(.ci/slurm-up.sh)"` (root) first'),
]


def sweep_env(tracking_uri: str) -> dict[str, str]:
    """This environment without a pipeline run's variables, tracking to ``tracking_uri``; ``python`` on the PATH
    is this interpreter (the SLURM jobs run it)."""
    return {k: v for k, v in os.environ.items() if k not in RUN_ENV} | {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


def job_log_tail(sweep: Path, lines: int = 80) -> str:
    """The last ``lines`` of each job's stderr log in ``sweep`` (its folder under ``.dvc/tmp/slurm``), for a
    failing assertion to show what the job printed."""
    logs = json.loads((sweep / "sweep.json").read_text())["logs"]
    tails = []
    for name, out in logs.items():
        err = stderr_log(out)
        text = err.read_text(errors="replace").splitlines()[-lines:] if err.is_file() else ["(no log)"]
        tails.append(f"--- {name}: {err}\n" + "\n".join(text))
    return "\n".join(tails)


def exp_rows(shown: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{experiment name: {"params": flat params.yaml, "metrics": flat metrics}}`` of ``dvc exp show --json``."""
    rows = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                params = data["params"]["params.yaml"]["data"]
                metrics = {k: v for m in data["metrics"].values() for k, v in (m.get("data") or {}).items()}
                rows[rev["name"]] = {"params": params, "metrics": metrics}
    return rows


#: Steps of :func:`distributed_train_sweep`'s experiment.
DISTRIBUTED_STEPS = 6


def distributed_train_sweep(
    root: Path, tracking_uri: str, env: dict[str, str], *options: str
) -> tuple[dict[str, Any], Run]:
    """Sweep the train stage of a tiny repository in ``root`` for :data:`DISTRIBUTED_STEPS` steps as one SLURM job
    with ``options`` (``--nodes``, ``--processes-per-node``, ...) and wait; checks that it succeeded, that MLflow
    has one train run (rank 0 logs, the other ranks do not), tagged with the job's id, with one loss point per
    step; returns its metrics in ``dvc exp show`` and that run."""
    repo = tiny_repo(root)
    command = [sys.executable, "-m", "pipeline", "sweep", "--executor", "slurm", "-S",
               f"train.iterations={DISTRIBUTED_STEPS}", "--target", "train", *options, "--wait", "--poll", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False)
    sweep = repo / ".dvc" / "tmp" / "slurm" / "sweep"
    assert done.returncode == 0, done.stdout + done.stderr + job_log_tail(sweep)
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    metrics = exp_rows(json.loads(shown.stdout))["sweep"]["metrics"]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("recyclelora").experiment_id])
    (train,) = [run for run in runs if run.info.run_name == "train"]
    job = json.loads((sweep / "sweep.json").read_text())["jobs"]["sweep"]
    assert train.data.tags["slurm.job_id"] == job and train.info.status == "FINISHED"
    steps = [point.step for point in client.get_metric_history(train.info.run_id, "loss")]
    assert steps == list(range(1, DISTRIBUTED_STEPS + 1))
    return metrics, train
