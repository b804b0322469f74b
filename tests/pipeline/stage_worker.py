"""``python -m tests.pipeline.stage_worker STAGE ...``: the real ``python -m pipeline`` command line, paused for
a kill from outside at the barrier after the checkpoint of step ``STAGE_PAUSE_STEP`` of the run folder
``STAGE_RUN_DIR`` (it writes its pid to ``STAGE_PAUSE_FILE`` first; see tests/train/elastic_worker.py)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.train.elastic_worker import arm_pause

if __name__ == "__main__":
    arm_pause(Path(os.environ["STAGE_PAUSE_FILE"]), 0, int(os.environ["STAGE_PAUSE_STEP"]),
              Path(os.environ["STAGE_RUN_DIR"]))  # fmt: skip
    from pipeline.cli import app

    app(prog_name="python -m pipeline")
