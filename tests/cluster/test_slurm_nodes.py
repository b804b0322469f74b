"""One experiment on two SLURM nodes: on the two-node SLURM of ``.ci/slurm-nodes-up.sh`` (two slurmd daemons on
this machine, nodes n1 and n2), a sweep job of ``--nodes 2`` starts one torchrun per node through ``srun``; they
meet at n1 through a c10d rendezvous and train as one gloo run of 2 ranks, logged once, and the experiment comes
home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.cluster import SLURM_TEST, exp_rows, job_log_tail, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)
from tests.pipeline.workspace import tiny_repo

#: The two-node SLURM's configuration (``.ci/run`` sets it after starting that SLURM).
NODES_CONF = os.environ.get("RECYCLELORA_SLURM_NODES_CONF", "")

pytestmark = [
    *SLURM_TEST,
    pytest.mark.skipif(
        not Path(NODES_CONF).is_file(),
        reason="no two-node SLURM: run .ci/slurm-nodes-up.sh (root) and set RECYCLELORA_SLURM_NODES_CONF",
    ),
]


def test_a_job_of_two_nodes_trains_as_one_gloo_run_across_them(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    repo = tiny_repo(tmp_path / "repo")
    env = sweep_env(mlflow_server) | {"SLURM_CONF": NODES_CONF}
    command = [sys.executable, "-m", "pipeline", "sweep", "--executor", "slurm", "-S", "train.iterations=6",
               "--target", "train", "--nodes", "2", "--cpus-per-node", "1", "--wait", "--poll", "2"]  # fmt: skip
    done = subprocess.run(
        command, cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    sweep = repo / ".dvc" / "tmp" / "slurm" / "sweep"
    assert done.returncode == 0, done.stdout + done.stderr + job_log_tail(sweep)

    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    metrics = exp_rows(json.loads(shown.stdout))["sweep"]["metrics"]
    # one process per node (--processes-per-node defaults to 1): 2 ranks only if both nodes trained
    assert metrics["world_size"] == 2 and metrics["iterations"] == 6, metrics

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("recyclelora").experiment_id])
    (train,) = [run for run in runs if run.info.run_name == "train"]  # rank 0 logs; the other node does not
    job = json.loads((sweep / "sweep.json").read_text())["jobs"]["sweep"]
    assert train.data.tags["slurm.job_id"] == job and train.data.tags["slurm.node"] == "n1"
    assert [point.step for point in client.get_metric_history(train.info.run_id, "loss")] == list(range(1, 7))
