"""A stop signal mid-training (Ctrl-C, ``kill``, a scheduler's preemption notice): the real ``recyclelora train``
command in a subprocess, signalled from here once its first checkpoint is on disk. It finishes the step it is in,
checkpoints it, says so in one line and exits with ``128 + signum``; ``--resume`` then ends with the tensors of an
uninterrupted run. A signal to the whole process group (what a terminal and torchrun send) also reaches the
DataLoader's worker, which must not fail the run (nor keep a failed run from exiting). Under torchrun the
processes stop at the same step and one line says so.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from recyclelora.config import load_params
from recyclelora.train.loop import train
from tests.helpers import tiny_model_config, tiny_train_config

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 40
CHECKPOINT_EVERY = 4
START_S = 240.0  # importing torch and the CLI on 2 busy cores
# One CPU thread in every training process of these tests: a matmul's sums round differently on another thread
# count, so a reference trained on pytest's threads differs from the subprocesses' by a few ULPs per step.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def write_params(folder: Path, manifest: Path, **train_overrides: object) -> Path:
    """params.yaml of the tiny model on the CPU (:data:`ITERATIONS` steps, a checkpoint every
    :data:`CHECKPOINT_EVERY`) in ``folder``."""
    transform = {"crop_size": [42, 42], "base_size": 48, "scale_ratios": [1.0]}
    config = tiny_train_config(iterations=ITERATIONS, checkpoint_every=CHECKPOINT_EVERY, device="cpu")
    run = {
        "data": {"train": [str(manifest)], "transform": transform},
        "model": tiny_model_config().to_dict(),
        "train": dataclasses.replace(config, **train_overrides).to_dict(),
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def start_when_checkpointed(
    command: list[str], run_dir: Path, logs: Path, cwd: Path = ROOT, env: dict[str, str] = ENV
) -> subprocess.Popen:
    """Start ``command`` in ``cwd`` with ``env`` in a session of its own (``logs/stdout``, ``logs/stderr``);
    return once the first checkpoint of ``run_dir`` is on disk, the process still training."""
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
    deadline = time.monotonic() + START_S
    while not (run_dir / "checkpoints" / "latest").is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no checkpoint:\n{(logs / 'stderr').read_text()[-3000:]}")
        time.sleep(0.01)
    return process


def stopped_step(
    process: subprocess.Popen, run_dir: Path, logs: Path, signum: int, iterations: int = ITERATIONS, cwd: Path = ROOT
) -> int:
    """Wait for the signalled process (started in ``cwd``); check its exit code, its last stderr line
    (``logs/stderr``: the one ``error:`` line) and its checkpoint in ``run_dir``; the step it stopped at."""
    try:
        process.wait(timeout=120)
    finally:
        process.kill()
    stderr = (logs / "stderr").read_text()
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert len(re.findall(r"^error:", stderr, flags=re.MULTILINE)) == 1, stderr[-3000:]
    name = signal.Signals(signum).name
    match = re.search(
        rf"^error: training stopped by {name} at step (\d+) of {iterations}: checkpoint saved in (\S+); continue "
        r"with --resume \(the DVC stage resumes by itself on `dvc repro`\)\n\Z",
        stderr,
        flags=re.MULTILINE,
    )
    assert match, stderr[-3000:]
    step, folder = int(match[1]), cwd / match[2]
    assert 1 <= step < iterations
    assert folder.resolve() == (run_dir / "checkpoints" / f"step_{step:07d}").resolve()
    assert (run_dir / "checkpoints" / "latest").read_text() == folder.name
    assert (folder / "model.safetensors").is_file() and (folder / "trainer_state.pt").is_file()
    assert not list(run_dir.rglob("*.partial")) and not (run_dir / "model.safetensors").exists()
    return step
def train_command(params: Path, run_dir: Path, cache_dir: Path) -> list[str]:
    """The ``recyclelora train`` command line of ``params`` into ``run_dir``, without a progress bar."""
    return [sys.executable, "-m", "recyclelora", "train", "--params", str(params), "--out", str(run_dir),
            "--cache-dir", str(cache_dir), "--no-progress"]  # fmt: skip


def run_to_end(command: list[str]) -> None:
    """Run a training ``command`` in a subprocess (:data:`ENV`) and check that it succeeded."""
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=START_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


#: A resumed run against the uninterrupted one on the same processes: only a few ULPs of drift.
RESUME_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
#: Two processes against their one-process reference (2 micro-batches): the all-reduce also sums in another
#: order, so the tolerance of test_ddp.py (1e-5 absolute; one AMD EPYC measured up to 4e-6 after 16 steps).
PROCESSES_TOLERANCE = {"rtol": 0.0, "atol": 1e-5}


def assert_same_training(
    run: Path, reference: Path, iterations: int = ITERATIONS, tolerance: dict[str, float] = RESUME_TOLERANCE
) -> None:
    """``run`` logged the ``iterations`` losses and saved the tensors of ``reference``, within ``tolerance``."""

    def losses(folder: Path) -> list[float]:
        with open(folder / "train_log.csv") as handle:
            return [float(row["loss"]) for row in csv.DictReader(handle)]

    assert losses(run) == pytest.approx(losses(reference), rel=1e-6, abs=tolerance["atol"])
    assert len(losses(run)) == iterations
    tensors, expected = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert tensors.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(tensors[key], value, **tolerance, msg=key)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stop_signals")


@pytest.fixture(scope="module")
def uninterrupted(folder: Path, tiny_benchmark: dict[str, dict[str, Path]]) -> Path:
    """The run folder of the same training, uninterrupted, by the same command."""
    out = folder / "uninterrupted"
    run_to_end(train_command(write_params(folder, tiny_benchmark["synth_src"]["train"]), out, folder / "init_cache"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "num_workers", "to_group"),
    [(signal.SIGTERM, 0, False), (signal.SIGTERM, 1, True), (signal.SIGINT, 1, True), (signal.SIGUSR2, 0, False)],
    ids=["SIGTERM", "SIGTERM-to-group-1-worker", "SIGINT-to-group-1-worker", "SIGUSR2"],
)
def test_a_signal_checkpoints_the_step_says_so_and_resume_is_exact(
    signum: signal.Signals,
    num_workers: int,
    to_group: bool,
    uninterrupted: Path,
    tiny_benchmark: dict[str, dict[str, Path]],
    tmp_path: Path,
) -> None:
    params = write_params(tmp_path, tiny_benchmark["synth_src"]["train"], num_workers=num_workers)
    run_dir = tmp_path / "run"
    command = train_command(params, run_dir, uninterrupted.parent / "init_cache")
    process = start_when_checkpointed(command, run_dir, tmp_path)
    (os.killpg if to_group else os.kill)(process.pid, signum)
    step = stopped_step(process, run_dir, tmp_path, signum)
    assert len((tmp_path / "stderr").read_text().splitlines()) == 1  # nothing but that line

    run_to_end([*command, "--resume"])
    assert json.loads((run_dir / "train_summary.json").read_text())["resumed_from"] == step
    assert_same_training(run_dir, uninterrupted)


_FAIL_AT_STEP_2 = """
import sys
from recyclelora.config import load_params
from recyclelora.train.loop import train
run = load_params(sys.argv[1], sections=("data", "model", "train"))
def fail(row):
    if row["step"] == 2:
        raise RuntimeError("boom")
try:
    train(run.model, run.train, run.data, sys.argv[2], cache_dir=sys.argv[3], progress=False, on_log=fail)
except RuntimeError as error:
    kept = error  # its traceback keeps the DataLoader iterator alive to the end, as pytest's report does
"""


@pytest.mark.slow
def test_a_run_that_fails_with_its_dataloader_worker_alive_still_exits(
    uninterrupted: Path, tiny_benchmark: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    """Workers ignore stop signals, but not their parent's SIGTERM: multiprocessing ends the workers left at exit
    with it, and waits for them."""
    params = write_params(tmp_path, tiny_benchmark["synth_src"]["train"], num_workers=1)
    command = [sys.executable, "-c", _FAIL_AT_STEP_2, str(params), str(tmp_path / "run"),
               str(uninterrupted.parent / "init_cache")]  # fmt: skip
    run_to_end(command)


DDP_ITERATIONS = 16


@pytest.fixture(scope="module")
def ddp_params(folder: Path, tiny_benchmark: dict[str, dict[str, Path]]) -> Path:
    """Global batch 4 (2 images per process), a DataLoader worker per process, a checkpoint every 4 steps."""
    ddp = folder / "ddp"
    ddp.mkdir()
    manifest = tiny_benchmark["synth_src"]["train"]
    return write_params(ddp, manifest, iterations=DDP_ITERATIONS, batch_size=4, num_workers=1)


@pytest.fixture(scope="module")
def ddp_uninterrupted(ddp_params: Path, folder: Path) -> Path:
    """What 2 processes of 2 images train, trained here as 1 process of 2 micro-batches (test_ddp.py)."""
    run = load_params(ddp_params, sections=("data", "model", "train"))
    out = ddp_params.parent / "uninterrupted"
    train(run.model, dataclasses.replace(run.train, grad_accum=2), run.data, out, cache_dir=folder / "init_cache",
          progress=False)  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("to_rank_1", [False, True], ids=["SIGTERM-to-torchrun", "SIGUSR2-to-rank-1-only"])
def test_under_torchrun_every_process_stops_at_the_same_step_and_rank_0_says_so(
    to_rank_1: bool, ddp_params: Path, ddp_uninterrupted: Path, folder: Path, tmp_path: Path
) -> None:
    """torchrun forwards SIGTERM to its workers' process groups (DataLoader workers included), then kills them
    after its grace period (30 s); a scheduler may signal one worker only. Either way the processes agree on the
    stop at a step's end, rank 0 checkpoints it and says so in the run's one ``error:`` line, both exit with
    ``128 + signum``, and ``--resume`` under torchrun ends with the uninterrupted run's tensors."""
    from tests.train.test_elastic import _command, _launched

    signum = signal.SIGUSR2 if to_rank_1 else signal.SIGTERM
    run_dir, cache = tmp_path / "run", folder / "init_cache"
    command = [*_command(ddp_params, run_dir, "--standalone", "--nproc_per_node=2"), "--cache-dir", str(cache)]
    with _launched([command], tmp_path) as (launcher,):
        deadline = time.monotonic() + START_S
        while not (run_dir / "checkpoints" / "latest").is_file():
            assert launcher.process.poll() is None, launcher.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.01)
        workers = psutil.Process(launcher.process.pid).children()
        target = next(w for w in workers if w.environ().get("RANK") == "1") if to_rank_1 else launcher.process
        signalled = time.monotonic()
        target.send_signal(signum)
        psutil.wait_procs(workers, timeout=START_S)
        stopped = time.monotonic() - signalled
        output = launcher.finish()
    assert stopped < 30, output[-3000:]  # torchrun's grace period before it kills its workers
    if to_rank_1:  # torchrun's summary gives the exit code of the first to end (rank 1 goes on, so both end)
        assert launcher.process.returncode == 1 and f"exitcode  : {128 + signum} (pid:" in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output[-3000:]
    match = re.fullmatch(rf"error: training stopped by {signum.name} at step (\d+) of {DDP_ITERATIONS}: checkpoint "
                         rf"saved in {re.escape(str(run_dir))}/checkpoints/(step_\d+); .*", lines[0])  # fmt: skip
    assert match and (run_dir / "checkpoints" / "latest").read_text() == match[2] == f"step_{int(match[1]):07d}"

    with _launched([command], tmp_path) as (launcher,):
        output = launcher.finish()
    assert launcher.process.returncode == 0, output[-3000:]
    assert json.loads((run_dir / "train_summary.json").read_text())["resumed_from"] == int(match[1])
    assert_same_training(run_dir, ddp_uninterrupted, iterations=DDP_ITERATIONS, tolerance=PROCESSES_TOLERANCE)
