"""int8 inference of the pipeline's exported model, side by side with onnxruntime fp32 and torch eager.

    python -m benchmarks.bench_int8 [--windows 64] [--repeats 5]

Reads the default pipeline's outputs (run ``dvc repro`` first): the merged checkpoint ``models/merged.safetensors``,
its ONNX export ``models/model.onnx`` (one sliding window, dynamic batch) and the prepared data. Writes a static
int8 copy (QDQ, calibrated on ``--windows`` windows of the source domain's training images, never a target's) and
a dynamic one into a scratch folder, then prints

- seconds per batch of 8 windows for torch eager, ORT fp32, ORT int8 static and ORT int8 dynamic, measured
  interleaved, with each one's ratio to ORT fp32 (the goal: static int8 at most 1 / 1.8 of it);
- mIoU on every target domain, scored as the ``evaluate`` stage scores (sliding windows), for each, and the mean's
  difference to ORT fp32 (the goal: at most 0.5 lost).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks._timing import print_ratios, time_interleaved
from pipeline.stages.evaluate import sliding_config, target_sets
from recyclelora.config import load_params
from recyclelora.eval.evaluate import evaluate
from recyclelora.eval.predictors import OnnxPredictor, TorchPredictor
from recyclelora.export import calibration_windows, quantize_onnx
from recyclelora.models.segmentor import Segmentor

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=PROJECT / "models/merged.safetensors")
    parser.add_argument("--onnx", type=Path, default=PROJECT / "models/model.onnx")
    parser.add_argument("--params", type=Path, default=PROJECT / "params.yaml")
    parser.add_argument("--windows", type=int, default=64, help="calibration windows of the source domain")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run = load_params(args.params)
    size = (run.eval.crop, run.eval.crop)
    predictors = {"torch eager": TorchPredictor(Segmentor.from_checkpoint(args.checkpoint).eval()),
                  "ORT fp32": OnnxPredictor(args.onnx, ["CPUExecutionProvider"])}  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        calibration = calibration_windows(run.data.train, run.data.val_transform, size, args.windows)
        for mode in ("static", "dynamic"):
            path = quantize_onnx(args.onnx, Path(scratch) / f"{mode}.onnx", mode, calibration if mode == "static" else None)
            predictors[f"ORT int8 {mode}"] = OnnxPredictor(path, ["CPUExecutionProvider"])
        batch = torch.cat(calibration)[:8]
        seconds = time_interleaved({name: (lambda p=p: p(batch)) for name, p in predictors.items()}, args.repeats)
        print_ratios("8 windows of the source domain", seconds, "ORT fp32", {"ORT int8 static": 1 / 1.8})
        sets, sliding = target_sets(run.eval, run.data.val_transform), sliding_config(run.eval)
        scores = {name: evaluate(p, sets, sliding=sliding, progress=False) for name, p in predictors.items()}
    table = Table(title="mIoU on the target domains (%)")
    for column in ("candidate", *sets, "mean", "mean - ORT fp32"):
        table.add_column(column)
    reference = scores["ORT fp32"].mean_miou
    for name, result in scores.items():
        cells = [f"{result.metrics[target].miou * 100:.2f}" for target in sets]
        table.add_row(name, *cells, f"{result.mean_miou * 100:.2f}", f"{(result.mean_miou - reference) * 100:+.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
