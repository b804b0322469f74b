from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recyclelora.data.synth import SynthConfig, generate_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _run(processes: int, manifest: Path, out: Path, batch_size: int, init: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tests.train.ddp_worker", str(manifest), str(out), str(batch_size), init]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(out / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("init", ["rrqr", "rrqr-main"])
def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path: Path, init: str) -> None:
    config = SynthConfig(width=96, height=48, source_train=8, source_val=1, target_val=1, targets=("synth_fog",))
    manifest = generate_benchmark(tmp_path / "synth", config=config, workers=1).manifests["synth_src"]["train"]
    single = _run(1, manifest, tmp_path / "one", batch_size=4, init=init)
    double = _run(2, manifest, tmp_path / "two", batch_size=2, init=init)
    assert single.keys() == double.keys()
    trained = [k for k in single if "lora_" in k or k.startswith(("head.", "backbone.neck."))]
    assert trained
    for key in trained:
        torch.testing.assert_close(double[key], single[key], rtol=0, atol=1e-5, msg=key)
