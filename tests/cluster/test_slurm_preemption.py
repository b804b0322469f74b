"""A SLURM job signalled before its end (``scancel --signal=USR2``, what ``--signal=USR2@N`` sends before the
time limit) checkpoints its training, is requeued by submitit, resumes from the checkpoint and ends with the
tensors of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dvc.api
import torch
from safetensors.torch import load

from tests.cluster import SLURM_TEST, job_log_tail, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)
from tests.pipeline.workspace import tiny_repo

pytestmark = SLURM_TEST
ITERATIONS = 120


def _exp_ref(repo: Path, name: str) -> str:
    """The Git ref of experiment ``name`` (``refs/exps/<baseline>/<name>``)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    (ref,) = [ref for ref in refs if ref.endswith(f"/{name}")]
    return ref


def test_a_signalled_job_is_requeued_and_resumes_to_the_uninterrupted_tensors(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    # two repositories, so that the reference's run cache cannot stand in for the preempted run's training
    repos = {prefix: tiny_repo(tmp_path / prefix) for prefix in ("pre", "ref")}
    env = sweep_env(mlflow_server)
    sweeps = {}
    for prefix in ("pre", "ref"):
        command = [sys.executable, "-m", "pipeline", "sweep", "--executor", "slurm", "--prefix", prefix]
        done = subprocess.run(
            [*command, "-S", f"train.iterations={ITERATIONS}"], cwd=repos[prefix], env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        sweeps[prefix] = repos[prefix] / ".dvc" / "tmp" / "slurm" / prefix
    job = json.loads((sweeps["pre"] / "sweep.json").read_text())["jobs"]["pre"]
    checkpoints = sweeps["pre"] / "workspaces" / "pre" / "models" / "train.partial" / "checkpoints"
    deadline = time.monotonic() + 1200
    while not (checkpoints / "latest").is_file():  # a whole checkpoint, not the folder of one being written
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, env=env)

    status = {prefix: sweeps[prefix] / "status" / f"{prefix}.json" for prefix in sweeps}
    seen = set()
    while not all(
        path.exists() and json.loads(path.read_text())["state"] in ("done", "failed")
        for path in status.values()
    ):
        seen.add(json.loads(status["pre"].read_text())["state"])
        assert time.monotonic() < deadline, seen
        time.sleep(1)
    records = {prefix: json.loads(path.read_text()) for prefix, path in status.items()}
    logs = "\n".join(job_log_tail(sweeps[p]) for p in sweeps)
    assert [records[p]["state"] for p in ("pre", "ref")] == ["done", "done"], f"{records}\n{logs}"
    assert "requeued" in seen and records["pre"]["job_id"] == job  # same job, requeued

    commits = {p: _exp_ref(repos[p], p) for p in repos}
    metrics = {
        p: json.loads(subprocess.run(["git", "show", f"{commits[p]}:metrics/train.json"], cwd=repos[p],
                                     capture_output=True, text=True, check=True).stdout)
        for p in repos
    }  # fmt: skip
    assert 0 < metrics["pre"]["resumed_from"] < ITERATIONS and metrics["ref"]["resumed_from"] == 0, metrics
    tensors = {
        p: load(dvc.api.read("models/train/model.safetensors", repo=str(repos[p]), rev=commits[p], mode="rb"))
        for p in ("pre", "ref")
    }
    assert tensors["pre"].keys() == tensors["ref"].keys()
    for name, value in tensors["ref"].items():
        torch.testing.assert_close(tensors["pre"][name], value, rtol=1e-5, atol=1e-6, msg=name)
