"""The train stage as several processes (``RECYCLELORA_NPROC_PER_NODE``): one DDP run under torchrun whose rank 0
is the stage (MLflow, run folder, metrics), stopped and resumed as one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import stages
from pipeline.presets import apply_preset
from recyclelora.errors import InvalidInputError
from recyclelora.io import PARTIAL_SUFFIX
from recyclelora.train.launch import NPROC_ENV, launch_command, processes_per_node, torchrun
from tests.pipeline.test_stages import CHECKSUMS, TINY, edit_params
from tests.pipeline.workspace import PROJECT, make_workspace
from tests.train.test_stop_signals import start_when_checkpointed

COMMAND = [sys.executable, "-m", "pipeline", "train", "--weights", "models/backbone", "--init-cache", "models/init",
           "--out", "models/train", "--metrics", "metrics/train.json", "--no-progress"]  # fmt: skip
PATHS = (Path("models/backbone"), Path("models/init"), Path("models/train"), Path("metrics/train.json"))


def test_one_process_runs_in_place_and_several_go_through_torchrun() -> None:
    args = ["-m", "pipeline", "train"]
    assert launch_command(args, {}) is None
    assert launch_command(args, {NPROC_ENV: "2", "WORLD_SIZE": "2"}) is None  # already a rank
    one_node = launch_command(args, {NPROC_ENV: "2", "SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1"})
    assert one_node is not None and one_node[1:3] == ["-m", "recyclelora.train.launch"]
    assert "--nproc-per-node=2" in one_node and "--standalone" in one_node and one_node[-3:] == args
    assert "SIGUSR2" in next(arg for arg in one_node if arg.startswith("--signals-to-handle="))
    with pytest.raises(InvalidInputError, match=f"{NPROC_ENV} must be a whole number of processes >= 1, got '0'"):
        processes_per_node({NPROC_ENV: "0"})


def test_several_slurm_nodes_start_one_torchrun_each_meeting_at_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a SLURM job of 2 nodes, srun starts one torchrun per node (within the job's allocation), which meet at
    the first node of the job's node list, on a port derived from the job id."""
    monkeypatch.setattr("recyclelora.train.launch.first_node", lambda environ: "gpu-a01")
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-a[01-02]"}
    command = launch_command(["-m", "pipeline", "train"], env)
    assert command is not None and command[:7] == [
        "srun", "--overlap", "--mem=0", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"
    ]  # fmt: skip
    assert {"--nproc-per-node=1", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-id=4242"} <= set(command)
    assert "--rdzv-endpoint=gpu-a01:33742" in command and "--standalone" not in command


def test_torchrun_status_is_the_stop_signals_or_one_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Processes that all stopped on SIGUSR2 (exit 140 each) end torchrun quietly with 140, as one process
    would; any other failure prints torchrun's summary naming the first failed rank and gives 1."""
    launch = ["--nproc-per-node=2", "--standalone", "--max-restarts=0", "--no-python", "sh", "-c"]
    assert torchrun([*launch, "exit 140"]) == 128 + signal.SIGUSR2
    assert "Root Cause" not in capsys.readouterr().err
    assert torchrun([*launch, "exit 3"]) == 1
    summary = capsys.readouterr().err
    assert "Root Cause" in summary and "exitcode  : 3" in summary


@pytest.fixture
def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny workspace whose data, backbone and init stages have run (train: 12 steps, a checkpoint every 2)."""
    make_workspace(tmp_path, monkeypatch)
    apply_preset(tmp_path / "params.yaml", str(TINY))
    edit_params(tmp_path / "params.yaml", "train.iterations", 12)
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    stages.run_data(params, Path("data/prepared"), CHECKSUMS)
    stages.run_weights(params, Path("models/backbone"))
    stages.run_init(params, Path("models/backbone"), Path("models/init"), progress=False)
    return tmp_path


def _env(processes: int) -> dict[str, str]:
    return {**os.environ, NPROC_ENV: str(processes), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}


@pytest.mark.slow
def test_two_processes_train_as_one_run_logged_once(prepared: Path) -> None:
    done = subprocess.run(
        COMMAND, cwd=prepared, env=_env(2), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("12 iterations in") == 1  # rank 0 reports, the other rank is silent
    summary = json.loads((prepared / "metrics/train.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 12 and summary["resumed_from"] == 0
    assert (prepared / "models/train/model.safetensors").is_file()
    assert not (prepared / f"models/train{PARTIAL_SUFFIX}").exists()
    client = MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.mlflow.runName = 'train'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    losses = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [point.step for point in losses] == list(range(1, 13))  # one curve, not one per rank


@pytest.mark.slow
def test_a_stop_signal_to_torchrun_checkpoints_every_rank_and_the_rerun_resumes(prepared: Path) -> None:
    """SIGUSR2 to the stage's process (torchrun after the relaunch; SLURM's notice, or the sweep job's) is
    forwarded to the ranks: they agree on a step, rank 0 checkpoints it and says so once; rerun, the stage
    resumes from that step, here as one process (train.batch_size is the global batch either way)."""
    edit_params(prepared / "params.yaml", "train.iterations", 400)
    partial = prepared / f"models/train{PARTIAL_SUFFIX}"
    process = start_when_checkpointed(COMMAND, partial, logs=prepared, cwd=prepared, env=_env(2))
    process.send_signal(signal.SIGUSR2)
    process.wait(timeout=120)
    stderr = (prepared / "stderr").read_text()
    assert process.returncode == 128 + signal.SIGUSR2, stderr[-3000:]  # as one process would exit
    assert "Traceback" not in stderr, stderr[-3000:]  # an orderly stop, not a crash
    stops = [line for line in stderr.splitlines() if line.startswith("error: training stopped by SIGUSR2 at step")]
    assert len(stops) == 1, stderr[-3000:]
    step = int(stops[0].split("at step ")[1].split()[0])
    assert (partial / "checkpoints" / f"step_{step:07d}").is_dir() and 1 <= step < 400

    summary = stages.run_train(prepared / "params.yaml", *PATHS, progress=False)
    assert summary is not None and summary["resumed_from"] == step and summary["world_size"] == 1
