"""A sweep on a real SLURM (``.ci/slurm-up.sh`` starts a one-node one; CI's slow lane has it): two tiny
experiments as SLURM jobs through submitit, an MLflow server on 127.0.0.1, and the contract of issue 20."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from tests.cluster import SLURM_TEST, exp_rows, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)
from tests.pipeline.workspace import tiny_repo

pytestmark = SLURM_TEST


def test_a_slurm_sweep_runs_each_experiment_as_a_job_and_brings_it_home(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    repo = tiny_repo(tmp_path / "repo")
    env = sweep_env(mlflow_server)
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "sweep",
        "--executor",
        "slurm",
        "-S",
        "model.adapter.init=lora,rrqr",
    ]
    start = time.monotonic()
    done = subprocess.run(
        [*command, "--wait", "--poll", "2"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    sweep = repo / ".dvc" / "tmp" / "slurm" / "sweep"
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["shared"] == ["data", "weights"]  # the init stage depends on the swept key
    print(f"two-experiment SLURM sweep: {wall:.0f} s wall")

    # both experiments are ordinary DVC experiments of the commit, with their params and metrics
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    rows = exp_rows(json.loads(shown.stdout))
    assert sorted(rows) == ["sweep-lora", "sweep-rrqr"], shown.stdout[-2000:]
    for name, init in (("sweep-lora", "lora"), ("sweep-rrqr", "rrqr")):
        assert rows[name]["params"]["model"]["adapter"]["init"] == init
        assert isinstance(rows[name]["metrics"]["mean_mIoU"], float)
    assert not list((sweep / "workspaces").iterdir())  # removed once home

    # their MLflow parent runs carry the SLURM job id; the shared stages ran once, in the shared job
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("recyclelora").experiment_id])
    parents = {r.data.tags.get("dvc_exp"): r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    for name in ("sweep-lora", "sweep-rrqr"):
        assert parents[name].data.tags["slurm.job_id"] == record["jobs"][name]
        assert parents[name].data.tags["slurm.node"]
    stages = [r.data.tags["stage"] for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert stages.count("data") == 1 and stages.count("weights") == 1, stages
    assert stages.count("init") == 2 and stages.count("train") == 2, stages
    shared = [r for r in runs if r.data.tags.get("stage") == "data"]
    assert shared[0].data.tags["slurm.job_id"] == record["jobs"]["sweep-shared"]

    # an experiment applies to the workspace from the shared cache
    applied = subprocess.run(
        ["dvc", "exp", "apply", "sweep-lora"], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert applied.returncode == 0, applied.stderr
    assert "init: lora" in (repo / "params.yaml").read_text()
    assert (
        json.loads((repo / "metrics" / "eval.json").read_text())["mean_mIoU"]
        == rows["sweep-rrqr"]["metrics"]["mean_mIoU"]
    )
