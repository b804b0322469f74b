"""Inference cost of a trained segmentor, measured side by side (interleaved repeats, medians):

- merged against unmerged segmentor (ViT-S/14 + light head, adapters r_main 32 + r_sub 4) on one batch;
- onnxruntime (CPU provider) against torch eager on CPU, both on the merged segmentor;
- evaluation throughput (images/s) on a small synthetic target set (512 x 256 images, the protocol's sliding
  windows, PNG decoding included), unmerged against merged.

Random weights (``weights="none"``) of the embedded default's shapes, so nothing is downloaded.

    python -m benchmarks.bench_inference [--batch 1] [--img 224] [--repeats 10] [--images 4] [--eval-repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import torch

from benchmarks._timing import print_ratios, time_interleaved
from recyclelora.adapters import merge_adapters
from recyclelora.data.dataset import SegmentationDataset
from recyclelora.data.synth import SynthConfig, generate_benchmark
from recyclelora.data.synth_domains import TARGET_DOMAINS
from recyclelora.data.transforms import EvalTransform
from recyclelora.eval.evaluate import PROTOCOL_SLIDING, evaluate
from recyclelora.eval.predictors import OnnxPredictor, TorchPredictor
from recyclelora.export import export_onnx, verify_onnx
from recyclelora.models import BackboneConfig, HeadConfig, ModelConfig, build_segmentor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--images", type=int, default=4, help="images in the synthetic evaluation set")
    parser.add_argument("--eval-repeats", type=int, default=3, help="repeats of the (slower) evaluation")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = ModelConfig(backbone=BackboneConfig(weights="none"), head=HeadConfig(kind="light"))
    unmerged = build_segmentor(config, generator=torch.Generator().manual_seed(0)).model.eval()
    merged = merge_adapters(copy.deepcopy(unmerged)).eval()
    x = torch.randn(args.batch, 3, args.img, args.img)
    print(
        f"{config.backbone.name} + light head, adapters {config.adapter.rank_main}+{config.adapter.rank_sub}, "
        f"batch {args.batch}, {args.img} px, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, load average {_load()}"
    )
    torch_unmerged, torch_merged = TorchPredictor(unmerged, "cpu"), TorchPredictor(merged, "cpu")
    seconds = time_interleaved(
        {"unmerged": lambda: torch_unmerged(x), "merged": lambda: torch_merged(x)}, repeats=args.repeats
    )
    print_ratios("segmentor forward (torch, CPU)", seconds, reference="unmerged", targets={"merged": 1.0})

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(merged, Path(tmp) / "model.onnx", x[:1])
        parity = verify_onnx(merged, path, x, providers=["CPUExecutionProvider"])
        onnx = OnnxPredictor(path, providers=["CPUExecutionProvider"])
        seconds = time_interleaved(
            {"torch eager": lambda: torch_merged(x), "onnxruntime": lambda: onnx(x)}, repeats=args.repeats
        )
    print_ratios("merged segmentor forward, CPU", seconds, reference="torch eager", targets={})
    print(f"onnx parity: relative {parity.max_rel_diff:.2e}, argmax agreement {parity.argmax_agreement:.4%}")

    with tempfile.TemporaryDirectory() as tmp:
        synth = SynthConfig(source_train=1, source_val=1, target_val=args.images, targets=TARGET_DOMAINS[:1])
        summary = generate_benchmark(tmp, config=synth, workers=1)
        target = SegmentationDataset(summary.manifests[TARGET_DOMAINS[0]]["val"], EvalTransform())

        def run(predict: TorchPredictor):
            return lambda: evaluate(predict, {"target": target}, sliding=PROTOCOL_SLIDING, progress=False)

        seconds = time_interleaved(
            {"unmerged": run(torch_unmerged), "merged": run(torch_merged)}, repeats=args.eval_repeats
        )
    print_ratios(
        f"evaluation of {args.images} {synth.width}x{synth.height} images",
        seconds,
        reference="unmerged",
        targets={},
    )
    for name, value in seconds.items():
        print(f"{name}: {args.images / value:.2f} images/s")
    print(f"load average at the end {_load()}")


def _load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
