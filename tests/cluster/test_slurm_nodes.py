"""One experiment on two SLURM nodes: on the two-node SLURM of ``.ci/slurm-nodes-up.sh`` (two slurmd daemons on
this machine, nodes n1 and n2), a sweep job of ``--nodes 2`` starts one torchrun per node through ``srun``; they
meet at n1 through a c10d rendezvous and train as one gloo run of 2 ranks, logged once (by rank 0, on whichever
node joined first), and the experiment comes home."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cluster import DISTRIBUTED_STEPS, SLURM_TEST, distributed_train_sweep, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)

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
    env = sweep_env(mlflow_server) | {"SLURM_CONF": NODES_CONF}
    options = ("--nodes", "2", "--cpus-per-node", "1")
    metrics, train = distributed_train_sweep(tmp_path / "repo", mlflow_server, env, *options)
    # one process per node (--processes-per-node defaults to 1): 2 ranks only if both nodes trained
    assert metrics["world_size"] == 2 and metrics["iterations"] == DISTRIBUTED_STEPS, metrics
    # rank 0 logs, on whichever node joined the c10d rendezvous first (both orders were seen here)
    assert train.data.tags["slurm.node"] in ("n1", "n2")
