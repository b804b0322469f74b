"""The RRQR worker processes die with the process that started them, even when it is killed with SIGKILL."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

PROJECT = Path(__file__).resolve().parents[2]
# Enough RRQR work that the two workers are busy when their parent is killed.
SCRIPT = """
import torch
from recyclelora.adapters.config import AdapterConfig
from recyclelora.adapters.init import compute_factors
weights = {f"w{i}": torch.randn(2048, 2048) for i in range(32)}
compute_factors(weights, AdapterConfig(rank_main=16, rank_sub=4), workers=2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_killing_init_leaves_no_worker_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=PROJECT)
    workers: list[psutil.Process] = []
    try:
        parent = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "the worker processes never started"
            time.sleep(0.1)
            workers = parent.children()
        time.sleep(0.5)  # the workers are inside RRQR now
        process.send_signal(signal.SIGKILL)
        process.wait()
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert alive == [], f"workers {[w.pid for w in alive]} outlived their killed parent"
    finally:
        process.kill()
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
