"""Faults in torchrun runs (gloo on the CPU): a killed process stops the run with torchrun's summary naming it,
``--max-restarts`` resumes from the last checkpoint as if nothing had happened, two launchers rendezvous like nodes.

The slow tests launch ``python -m torch.distributed.run ... -m tests.train.elastic_worker train --params P --out RUN
--resume`` (the real command line, see elastic_worker.py) and kill a worker with SIGKILL from here once the
checkpoint of step :data:`KILL_AFTER` is written. Every process they start carries a tag in its environment and is
killed at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from recyclelora.config import load_params
from recyclelora.errors import UserError
from recyclelora.train import distributed
from recyclelora.train.loop import train
from tests.helpers import tiny_model_config, tiny_train_config

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 4
KILL_AFTER = 2  # the killed run resumes from this step's checkpoint
START_S = 240.0  # generous: importing torch and the CLI in 2 processes on 2 busy cores takes most of a minute
TAG = "RECYCLELORA_ELASTIC_TEST"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory, tiny_benchmark: dict[str, dict[str, Path]]) -> Path:
    """params.yaml of the tiny model: 4 steps of global batch 4, a checkpoint after every step, on the CPU."""
    folder = tmp_path_factory.mktemp("elastic")
    transform = {"crop_size": [42, 42], "base_size": 48, "scale_ratios": [1.0]}
    train = tiny_train_config(iterations=ITERATIONS, batch_size=4, checkpoint_every=1, device="cpu")
    run = {
        "data": {"train": [str(tiny_benchmark["synth_src"]["train"])], "transform": transform},
        "model": tiny_model_config().to_dict(),
        "train": train.to_dict(),
    }
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def _command(params: Path, out: Path, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "tests.train.elastic_worker", "train",
            "--params", str(params), "--out", str(out), "--resume", "--cache-dir", str(params.parent / "init_cache"),
            "--no-progress"]  # fmt: skip


@dataclasses.dataclass
class _Launcher:
    process: subprocess.Popen
    log: Path  # stdout and stderr (a file: nobody reads a pipe while the test waits for the pause)

    def finish(self, seconds: float = START_S) -> str:
        """Wait for the launcher to end; its output."""
        self.process.wait(timeout=seconds)
        return self.log.read_text()


@contextlib.contextmanager
def _launched(commands: list[list[str]], logs: Path, **env: str) -> Iterator[list[_Launcher]]:
    """Start the launchers; at the end kill every process that carries this call's tag, whatever happened."""
    tag = uuid.uuid4().hex
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), TAG: tag, **env}
    launchers: list[_Launcher] = []
    try:
        for index, command in enumerate(commands):
            log = logs / f"launcher_{index}.log"
            with open(log, "w") as handle:
                process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=handle,
                                           stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            launchers.append(_Launcher(process, log))
        yield launchers
    finally:
        for launcher in launchers:
            if launcher.process.poll() is None:
                os.killpg(launcher.process.pid, signal.SIGKILL)
        for process in psutil.process_iter():  # workers run in process groups of their own
            with contextlib.suppress(psutil.Error):
                if process.environ().get(TAG) == tag:
                    process.kill()
        for launcher in launchers:
            launcher.process.wait()


def _pause_env(pause: Path, rank: int, out: Path) -> dict[str, str]:
    return {"ELASTIC_PAUSE_FILE": str(pause), "ELASTIC_PAUSE_RANK": str(rank), "ELASTIC_PAUSE_STEP": str(KILL_AFTER),
            "ELASTIC_RUN_DIR": str(out)}  # fmt: skip


def _kill_when_paused(pause: Path, launchers: list[_Launcher]) -> int:
    """SIGKILL the worker that wrote ``pause`` (once the checkpoint of step KILL_AFTER is written); its pid."""
    deadline = time.monotonic() + START_S
    while not pause.is_file():
        for launcher in launchers:
            assert launcher.process.poll() is None, f"ended early:\n{launcher.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no worker reached the pause"
        time.sleep(0.05)
    pid = int(pause.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


def _result(out: Path) -> tuple[dict[str, torch.Tensor], list[float], dict]:
    with open(out / "train_log.csv") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    return load_file(out / "model.safetensors"), losses, json.loads((out / "train_summary.json").read_text())


def _assert_same_training(run: Path, reference: Path) -> None:
    tensors, losses, summary = _result(run)
    expected, expected_losses, _ = _result(reference)
    assert summary["world_size"] == 2 and len(losses) == len(expected_losses) == ITERATIONS
    assert losses == pytest.approx(expected_losses, rel=0, abs=1e-5)
    assert tensors.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(tensors[key], value, rtol=0, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def uninterrupted(params: Path) -> Path:
    """The run folder of an uninterrupted run of the same optimiser steps, trained here: one process in 2
    micro-batches of 2 images trains what 2 processes of 2 images train, up to float summation order
    (test_ddp.py), and saves the start-up of 2 more processes."""
    run = load_params(params, sections=("data", "model", "train"))
    out = params.parent / "uninterrupted"
    train(run.model, dataclasses.replace(run.train, grad_accum=2), run.data, out,
          cache_dir=params.parent / "init_cache", progress=False)  # fmt: skip
    return out


@pytest.mark.slow
def test_a_killed_process_stops_the_run_and_torchrun_names_its_rank(params: Path, tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed mid-run (rank 0 waits in a collective): the launcher exits non-zero within seconds,
    its summary names rank 1 and the signal as the root cause, and no worker prints a traceback."""
    out, pause = tmp_path / "run", tmp_path / "pause"
    command = _command(params, out, "--standalone", "--nproc_per_node=2")
    with _launched([command], tmp_path, **_pause_env(pause, rank=1, out=out)) as (launcher,):
        pid = _kill_when_paused(pause, [launcher])
        killed = time.monotonic()
        output = launcher.finish(seconds=60)
        stopped = time.monotonic() - killed
    assert launcher.process.returncode != 0, output[-3000:]
    assert stopped < 30, output[-3000:]
    root_cause = output.split("Root Cause")[-1]
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", root_cause), output[-3000:]
    assert f"exitcode  : -9 (pid: {pid})" in root_cause and "SIGKILL" in root_cause, output[-3000:]
    # neither torch's "[rank0]:" traceback nor one through our code; a survivor says at most one line
    assert "[rank" not in output and not re.search(r"recyclelora/[\w/]+\.py", output), output[-3000:]
    assert len([line for line in output.splitlines() if line.startswith("error: rank")]) <= 1


@pytest.mark.slow
def test_max_restarts_resumes_from_the_last_checkpoint_like_an_uninterrupted_run(
    params: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """``torchrun --max-restarts=1 ... train --resume``: rank 0 (the one that writes checkpoints) is SIGKILLed
    after the checkpoint of step 2; the restarted processes resume from it and end with the uninterrupted run's
    losses and tensors."""
    out, pause = tmp_path / "run", tmp_path / "pause"
    command = _command(params, out, "--standalone", "--nproc_per_node=2", "--max-restarts=1")
    with _launched([command], tmp_path, **_pause_env(pause, rank=0, out=out)) as (launcher,):
        _kill_when_paused(pause, [launcher])
        output = launcher.finish()
    assert launcher.process.returncode == 0, output[-3000:]
    assert _result(out)[2]["resumed_from"] == KILL_AFTER
    _assert_same_training(out, uninterrupted)


@pytest.mark.slow
def test_two_launchers_rendezvous_like_two_nodes_and_train_like_one(
    params: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """Two launchers of one process each meet at a c10d rendezvous on 127.0.0.1 (``--nnodes 2``) and train what
    one process trains with the same global batch, which is what one launcher of two processes trains (the test
    above, and test_ddp.py)."""
    out, port = tmp_path / "run", _free_port()
    launcher_args = ("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                     f"--rdzv-id={uuid.uuid4().hex[:8]}")  # fmt: skip
    with _launched([_command(params, out, *launcher_args)] * 2, tmp_path) as launchers:
        outputs = [launcher.finish() for launcher in launchers]
    codes = [launcher.process.returncode for launcher in launchers]
    assert codes == [0, 0], "\n\n".join(output[-3000:] for output in outputs)
    _assert_same_training(out, uninterrupted)


def test_a_failed_collective_ends_the_process_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """gloo's error when a peer is gone becomes one line naming this rank and the timeout; other errors, and
    errors of a single process, pass unchanged."""
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    monkeypatch.setattr(distributed, "PEER_GRACE_S", 0.0)
    info = distributed.DistInfo(rank=1, world_size=2, device=torch.device("cpu"))
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
            "[127.0.0.1]:9918. This is typically caused by a remote worker crashing.\nsecond line")  # fmt: skip
    with pytest.raises(distributed.CollectiveFailure) as caught, distributed.stop_on_peer_failure(info):
        raise RuntimeError(gloo)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)  # the CLI prints it as one line
    assert "\n" not in message and message.startswith("rank 1 of 2 stops")
    assert "90 s (RECYCLELORA_DIST_TIMEOUT)" in message
    assert message.endswith("[Connection closed by peer [127.0.0.1]:9918]")
    distributed.teardown()  # nothing to leave; resets the state
    with pytest.raises(RuntimeError, match="shapes"), distributed.stop_on_peer_failure(info):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    alone = distributed.DistInfo(rank=0, world_size=1, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="closed by peer"), distributed.stop_on_peer_failure(alone):
        raise RuntimeError(gloo)


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_the_collective_timeout_must_be_positive_seconds(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
        distributed.timeout()
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2.5")
    assert distributed.timeout().total_seconds() == 2.5
