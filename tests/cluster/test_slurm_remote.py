"""A SLURM sweep whose nodes cannot see the user's repository: the commit goes through a Git remote, the sweep's
record, logs and workspaces live in a shared --workdir, and the finished experiment comes home by a pull."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cluster import SLURM_TEST, exp_rows, job_log_tail, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)
from tests.pipeline.workspace import GIT, tiny_repo

pytestmark = SLURM_TEST


def test_jobs_clone_from_and_push_to_a_git_remote_and_the_sweep_pulls_them_home(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    repo, remote, shared = tiny_repo(tmp_path / "repo"), tmp_path / "remote.git", tmp_path / "shared"
    subprocess.run([*GIT, "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run([*GIT, "remote", "add", "origin", str(remote)], cwd=repo, check=True)
    env = sweep_env(mlflow_server)
    command = [sys.executable, "-m", "pipeline", "sweep", "--executor", "slurm", "-S", "model.adapter.rank_main=1",
               "--target", "init", "--git-remote", "origin", "--workdir", str(shared), "--wait", "--poll", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + job_log_tail(shared / "sweep")

    record = json.loads((shared / "sweep" / "sweep.json").read_text())
    assert record["source"] == str(remote) and record["fetch"] == "refs/recyclelora/sweeps/sweep"
    assert not (repo / ".dvc" / "tmp" / "slurm").exists()  # nothing of the sweep in the repository
    refs = subprocess.run(["git", "ls-remote", str(remote)], capture_output=True, text=True, check=True).stdout
    assert f"{record['rev']}\trefs/recyclelora/sweeps/sweep" in refs  # the commit the jobs fetched
    assert any(line.startswith("refs/exps/") and line.endswith("/sweep") for line in refs.split())  # pushed there
    assert "pulled from" in done.stdout and "sweep" in done.stdout.rsplit("pulled from", 1)[1]

    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert exp_rows(json.loads(shown.stdout))["sweep"]["params"]["model"]["adapter"]["rank_main"] == 1
