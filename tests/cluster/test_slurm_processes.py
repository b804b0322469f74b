"""One experiment as several processes on a real SLURM: a job of 2 CPUs with ``--processes-per-node 2`` trains
as one gloo run of 2 ranks (torchrun, started by the train stage), logged once to MLflow, and comes home."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import DISTRIBUTED_STEPS, SLURM_TEST, distributed_train_sweep, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)

pytestmark = SLURM_TEST


def test_a_job_of_two_processes_trains_as_one_gloo_run(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    options = ("--cpus-per-node", "2", "--processes-per-node", "2")
    metrics, _ = distributed_train_sweep(tmp_path / "repo", mlflow_server, sweep_env(mlflow_server), *options)
    assert metrics["world_size"] == 2 and metrics["iterations"] == DISTRIBUTED_STEPS, metrics
