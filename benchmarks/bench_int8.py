"""int8 inference of the pipeline's exported model, side by side with onnxruntime fp32 and torch eager.

    python -m benchmarks.bench_int8 [--windows 64] [--repeats 5]

Reads the default pipeline's outputs (run ``dvc repro`` first): the merged checkpoint ``models/merged.safetensors``,
its ONNX export ``models/onnx/model.onnx`` (one sliding window, dynamic batch) and the prepared data. Writes a static
int8 copy (QDQ, calibrated on ``--windows`` windows of the source domain's training images, never a target's) and
a dynamic one into a scratch folder, then prints

- seconds per batch of 8 windows for torch eager, ORT fp32, ORT int8 static and ORT int8 dynamic, measured
  interleaved, with each one's ratio to ORT fp32 (the goal: static int8 at most 1 / 1.8 of it);
- mIoU on every target domain, scored as the ``evaluate`` stage scores (sliding windows), for each, and the mean's
  difference to ORT fp32 (the goal: at most 0.5 lost).

With ``--profile``, first where ORT's kernel time goes for fp32 and static int8 (onnxruntime's profiler, one
thread, the same batch): the matrix products (MatMul, Gemm, Conv and their int8 forms), quantize/dequantize, and
everything else, and from these the most static int8 can gain on this CPU, t_fp32 / (t_other_fp32 + t_products_int8):
the int8 products at their measured speed with (de)quantization and the other ops free.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnxruntime as ort
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
#: ORT op types of the matrix products, in float and int8 (QDQ graphs fuse to the QLinear forms).
PRODUCTS = frozenset({"MatMul", "FusedMatMul", "Gemm", "Conv", "FusedConv", "QLinearMatMul", "QLinearConv",
                      "MatMulInteger", "ConvInteger", "QGemm", "MatMulIntegerToFloat"})  # fmt: skip
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def kernel_seconds(model: Path, batch: torch.Tensor, folder: Path, repeats: int = 3) -> dict[str, float]:
    """Seconds of ORT kernel time per run of ``batch`` by group (products, conversions, other), one thread."""
    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, 1
    options.profile_file_prefix = str(folder / model.stem)
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: batch.numpy()}
    for _ in range(repeats + 1):  # the first run (allocation, packing) is left out below
        session.run(None, feed)
    events = [e for e in json.loads(Path(session.end_profiling()).read_text()) if e.get("cat") == "Node"]
    kernels = [e for e in events if e["name"].endswith("_kernel_time")]
    groups: collections.Counter[str] = collections.Counter()
    for event in kernels[len(kernels) // (repeats + 1) :]:
        op = event["args"]["op_name"]
        group = "products" if op in PRODUCTS else "conversions" if op in CONVERSIONS else "other"
        groups[group] += event["dur"] / 1e6 / repeats
    return dict(groups)


def print_profile(fp32: dict[str, float], int8: dict[str, float]) -> None:
    """The kernel-time table of fp32 and static int8 and the most static int8 can gain on this CPU."""
    table = Table(title="ORT kernel seconds per batch, one thread")
    for column in ("group", "fp32", "int8 static", "fp32 / int8"):
        table.add_column(column)
    for group in ("products", "conversions", "other"):
        a, b = fp32.get(group, 0.0), int8.get(group, 0.0)
        table.add_row(group, f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}" if a and b else "")
    total = sum(fp32.values())
    table.add_row("total", f"{total:.3f}", f"{sum(int8.values()):.3f}", f"{total / sum(int8.values()):.2f}")
    Console().print(table)
    bound = total / (fp32.get("other", 0.0) + int8["products"])
    Console().print(f"most static int8 can gain here (its products as measured, conversions and other ops free): {bound:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=PROJECT / "models/merged.safetensors")
    parser.add_argument("--onnx", type=Path, default=PROJECT / "models/onnx/model.onnx")
    parser.add_argument("--params", type=Path, default=PROJECT / "params.yaml")
    parser.add_argument("--windows", type=int, default=64, help="calibration windows of the source domain")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="first, ORT's kernel time by op group")
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
        if args.profile:
            folder = Path(scratch)
            print_profile(kernel_seconds(args.onnx, batch, folder), kernel_seconds(folder / "static.onnx", batch, folder))
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
