"""One experiment as several processes on a real SLURM: a job of 2 CPUs with ``--processes-per-node 2`` trains
as one gloo run of 2 ranks (torchrun, started by the train stage), logged once to MLflow, and comes home."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from tests.cluster import SLURM_TEST, exp_rows, job_log_tail, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)
from tests.pipeline.workspace import tiny_repo

pytestmark = SLURM_TEST


def test_a_job_of_two_processes_trains_as_one_gloo_run(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    repo = tiny_repo(tmp_path / "repo")
    env = sweep_env(mlflow_server)
    command = [sys.executable, "-m", "pipeline", "sweep", "--executor", "slurm", "-S", "train.iterations=6",
               "--target", "train", "--cpus-per-node", "2", "--processes-per-node", "2", "--wait", "--poll", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False)
    sweep = repo / ".dvc" / "tmp" / "slurm" / "sweep"
    assert done.returncode == 0, done.stdout + done.stderr + job_log_tail(sweep)

    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    metrics = exp_rows(json.loads(shown.stdout))["sweep"]["metrics"]
    assert metrics["world_size"] == 2 and metrics["iterations"] == 6, metrics

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("recyclelora").experiment_id])
    (train,) = [run for run in runs if run.info.run_name == "train"]  # rank 0 logs; the other rank does not
    job = json.loads((sweep / "sweep.json").read_text())["jobs"]["sweep"]
    assert train.data.tags["slurm.job_id"] == job and train.info.status == "FINISHED"
    assert [point.step for point in client.get_metric_history(train.info.run_id, "loss")] == list(range(1, 7))
