"""benchmarks/gpu_check.py runs end to end on the CPU at its tiny shape, so it is ready the day a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_measures_every_row_at_the_tiny_shape(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    env = os.environ | {"PYTHONPATH": str(PROJECT)}
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--steps", "1", "--out", str(out)],
                            cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["what"]: row for row in json.loads(out.read_text())["rows"]}
    for precision in ("fp32", "tf32", "bf16"):
        assert rows[f"train step, {precision}"]["per_second"] > 0
    share = next(row for name, row in rows.items() if name.startswith("deformable sampling"))["share"]
    assert 0 < share < 1  # on a CPU the tiny Mask2Former's deformable attention samples with the gather
    for name in ("grid_sample", "gather"):
        row = rows[f"deformable sampling fwd + bwd, batch 1, {name}"]
        assert row["per_second"] > 0 and row["max_rel_diff"] < 1e-5
    assert all(rows[f"sliding windows 128x256, {p}"]["per_second"] > 0 for p in ("fp32", "bf16"))
    onnx = rows["ONNX window, CPUExecutionProvider"]
    assert onnx["max_rel_diff"] < 1e-3 and onnx["argmax_agreement"] >= 0.999
    assert "paper-g2cbm (tiny) on CPU" in result.stdout
