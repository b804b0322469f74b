from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recyclelora.data.synth import SynthConfig, generate_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _run(processes: int, manifest: Path, out: Path, grad_accum: int, init: str) -> tuple[dict, list[float]]:
    """Train with global batch 4 on ``processes`` gloo processes; the final tensors and the logged losses."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tests.train.ddp_worker", str(manifest), str(out), str(grad_accum), init]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "train_log.csv") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    return load_file(out / "model.safetensors"), losses


@pytest.mark.slow
@pytest.mark.parametrize("init", ["rrqr", "rrqr-main"])
def test_two_gloo_processes_follow_one_process_with_the_same_global_batch(tmp_path: Path, init: str) -> None:
    """train.batch_size is the global batch: 2 processes x 2 images, 1 process x 4 images and 1 process x 2
    micro-batches of 2 take the same optimiser steps. The transform gives every image equally many labelled
    pixels, so the mean of the per-micro-batch mean losses is the global mean: only float summation order
    differs (tolerance 1e-5 on losses and trained tensors)."""
    config = SynthConfig(width=96, height=48, source_train=8, source_val=1, target_val=1, targets=("synth_fog",))
    manifest = generate_benchmark(tmp_path / "synth", config=config, workers=1).manifests["synth_src"]["train"]
    single, single_losses = _run(1, manifest, tmp_path / "one", grad_accum=1, init=init)
    runs = {
        "2 processes": _run(2, manifest, tmp_path / "two", grad_accum=1, init=init),
        "grad_accum 2": _run(1, manifest, tmp_path / "accum", grad_accum=2, init=init),
    }
    trained = [k for k in single if "lora_" in k or k.startswith(("head.", "backbone.neck."))]
    assert trained and len(single_losses) == 3
    for name, (tensors, losses) in runs.items():
        assert tensors.keys() == single.keys(), name
        assert losses == pytest.approx(single_losses, rel=0, abs=1e-5), name
        for key in trained:
            torch.testing.assert_close(tensors[key], single[key], rtol=0, atol=1e-5, msg=f"{name}: {key}")
