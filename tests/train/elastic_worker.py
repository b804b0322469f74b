"""Run by ``torchrun`` from test_elastic.py: the real ``recyclelora train`` command line, with one test hook.

With ``ELASTIC_PAUSE_FILE``, ``ELASTIC_PAUSE_RANK`` and ``ELASTIC_PAUSE_STEP`` set, that rank stops once the
checkpoint of that step is on disk and every process has passed the barrier after it: it writes its process id to
the pause file and sleeps, so the test can kill it at a known point (a real SIGKILL from outside). The hook is
armed in the first worker group only (``TORCHELASTIC_RESTART_COUNT`` 0): the group torchrun restarts runs through.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from recyclelora.train import distributed


def arm_pause(pause_file: Path, rank: int, step: int, run_dir: Path) -> None:
    """Make ``rank`` write its pid to ``pause_file`` and sleep at the barrier after step ``step``'s checkpoint
    of the run in ``run_dir`` is on disk (the test then kills it)."""
    barrier = distributed.barrier

    def pausing_barrier(info: distributed.DistInfo) -> None:
        barrier(info)
        latest = run_dir / "checkpoints" / "latest"
        if info.rank == rank and latest.is_file() and latest.read_text().strip() == f"step_{step:07d}":
            partial = pause_file.with_suffix(".partial")
            partial.write_text(str(os.getpid()))
            partial.rename(pause_file)
            time.sleep(300)  # killed by the test long before
            os._exit(3)

    distributed.barrier = pausing_barrier


if __name__ == "__main__":
    if "ELASTIC_PAUSE_FILE" in os.environ and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        arm_pause(Path(os.environ["ELASTIC_PAUSE_FILE"]), int(os.environ["ELASTIC_PAUSE_RANK"]),
                  int(os.environ["ELASTIC_PAUSE_STEP"]), Path(os.environ["ELASTIC_RUN_DIR"]))  # fmt: skip
    from recyclelora.cli.main import app

    app(prog_name="recyclelora")
