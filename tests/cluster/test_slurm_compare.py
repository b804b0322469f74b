"""``python -m pipeline.compare run --executor slurm`` on a real SLURM: the method table's experiments run as
SLURM jobs (a shared job first), come home as DVC experiments, and the table is written from their metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.cluster import SLURM_TEST, exp_rows, sweep_env
from tests.pipeline.test_tracking import mlflow_server  # noqa: F401 (the fixture: one real mlflow server)
from tests.pipeline.workspace import tiny_repo

pytestmark = SLURM_TEST


def test_compare_run_on_slurm_writes_the_table_of_its_jobs(
    tmp_path: Path,
    mlflow_server: str,  # noqa: F811
) -> None:
    repo = tiny_repo(tmp_path / "repo")
    preset = tmp_path / "tiny-table.yaml"  # the tiny repo's own 4 steps, not the CPU table's 100
    preset.write_text("train:\n  iterations: 4\n")
    table = tmp_path / "table.md"
    command = [
        sys.executable, "-m", "pipeline.compare", "run", "--executor", "slurm", "--method", "lora",
        "--method", "rrqr", "--seed", "0", "--preset", str(preset), "--out", str(table), "--poll", "2",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=repo, env=sweep_env(mlflow_server), capture_output=True, text=True,
                          timeout=1500, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((repo / ".dvc" / "tmp" / "slurm" / "cmp" / "sweep.json").read_text())
    assert sorted(record["jobs"]) == ["cmp-lora-s0", "cmp-rrqr-s0", "cmp-shared"]

    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    rows = exp_rows(json.loads(shown.stdout))
    assert {name: rows[name]["params"]["model"]["adapter"]["init"] for name in rows} == {
        "cmp-lora-s0": "lora", "cmp-rrqr-s0": "rrqr",
    }  # fmt: skip
    text = table.read_text()
    for method, name in (("LoRA", "cmp-lora-s0"), ("RecycleLoRA", "cmp-rrqr-s0")):
        (row,) = re.findall(rf"^\| {method} \| 1 \| .*$", text, flags=re.MULTILINE)
        mean = row.split(" | ")[5]  # method, seeds, trainable, the two targets, then the mean
        assert mean == f"{100 * rows[name]['metrics']['mean_mIoU']:.1f}", (row, rows[name]["metrics"])
    assert re.search(r"^\| LoRA \| [+-]\d", text.split("## Difference to RecycleLoRA")[1], flags=re.MULTILINE)
