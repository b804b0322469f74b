"""A failed experiment of a SLURM sweep: ``--wait`` fails listing it with its log and kept workspace, and
``--retry-failed`` resubmits it alone, neither the finished experiment nor the shared job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.sweep.slurm import stderr_log
from tests.cluster import SLURM_TEST, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)
from tests.pipeline.workspace import tiny_repo

pytestmark = SLURM_TEST


def test_a_failed_experiment_is_listed_and_retried_alone(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    repo = tiny_repo(tmp_path / "repo")
    env = sweep_env(mlflow_server)
    sweep = [sys.executable, "-m", "pipeline", "sweep", "--executor", "slurm", "--wait", "--poll", "2"]
    first = subprocess.run(
        [*sweep, "-S", "model.adapter.init=lora,bogus", "--target", "init"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert first.returncode == 1, first.stdout + first.stderr
    folder = repo / ".dvc" / "tmp" / "slurm" / "sweep"
    record = json.loads((folder / "sweep.json").read_text())
    assert record["shared"] == ["weights"]  # what init needs and the swept key does not reach
    (failure,) = [line for line in first.stdout.splitlines() if line.startswith("failed: ")]
    log = record["logs"]["sweep-bogus"]
    assert failure.startswith(f"failed: sweep-bogus (job {record['jobs']['sweep-bogus']}): ")
    assert f"log: {log}" in failure and f"workspace kept: {folder / 'workspaces' / 'sweep-bogus'}" in failure
    assert "bogus" in stderr_log(log).read_text()  # the stage's own error is in the log
    assert "bogus" in failure.partition(" (saying: ")[2]  # and the listing quotes it
    retry = "fix them, then `python -m pipeline sweep --executor slurm --retry-failed --prefix sweep`"
    assert first.stderr.strip().splitlines() == [
        f"error: 1 of 3 job(s) failed (listed above with their logs): {retry}"
    ]

    second = subprocess.run([*sweep, "--retry-failed"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=1200, check=False)  # fmt: skip
    assert second.returncode == 1, second.stdout + second.stderr  # it fails again: the value is still bogus
    again = json.loads((folder / "sweep.json").read_text())["jobs"]
    assert again["sweep-shared"] == record["jobs"]["sweep-shared"]
    assert again["sweep-lora"] == record["jobs"]["sweep-lora"]
    assert again["sweep-bogus"] != record["jobs"]["sweep-bogus"]
    assert "submitted to SLURM" in second.stdout and f"sweep-bogus {again['sweep-bogus']}" in second.stdout
