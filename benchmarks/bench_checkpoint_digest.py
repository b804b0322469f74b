"""Cost of verifying a checkpoint's tensor digest, against loading it, on a DINOv2-L-sized merged model.

A merged segmentor with a random ViT-L/14 backbone (304 M values, fp32, about 1.2 GB) and the light head is
saved once; then, interleaved, the full load (``Segmentor.from_checkpoint``: read the file, verify its digest, build the
model, load the tensors), the file read alone (safetensors, no digest) and the digest alone over the same
tensors. Target: the digest is at most 10 % of the load; its ratio to the bare file read is printed too.

    python -m benchmarks.bench_checkpoint_digest [--repeats 3] [--model vit_large_patch14_dinov2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks._timing import print_ratios, time_interleaved
from recyclelora.models import BackboneConfig, HeadConfig, ModelConfig, Segmentor, build_segmentor
from recyclelora.models.checkpoint import read_tensors, save_segmentor, tensor_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="vit_large_patch14_dinov2")
    args = parser.parse_args()
    config = ModelConfig(
        backbone=BackboneConfig(name=args.model, weights="none", img_size=518),
        head=HeadConfig(kind="light"),
        tuning="full",
    )
    built = build_segmentor(config)
    with tempfile.TemporaryDirectory() as folder:
        path = save_segmentor(
            Path(folder) / "merged.safetensors", built.model, config, backbone_sha256="", merged=True
        )
        del built
        tensors = read_tensors(path)
        size_gb = path.stat().st_size / 1e9
        values = sum(t.numel() for t in tensors.values())
        print(f"{args.model}: {values / 1e6:.0f} M values, file {size_gb:.2f} GB, torch threads "
              f"{torch.get_num_threads()}")  # fmt: skip
        seconds = time_interleaved(
            {
                "Segmentor.from_checkpoint (verified)": lambda: Segmentor.from_checkpoint(path),
                "file read only": lambda: load_file(path),
                "digest only": lambda: tensor_digest(tensors),
            },
            repeats=args.repeats,
        )
    print_ratios(
        "checkpoint digest cost", seconds, "Segmentor.from_checkpoint (verified)", {"digest only": 0.10}
    )
    print(f"digest / file read alone: {seconds['digest only'] / seconds['file read only']:.3f}")


if __name__ == "__main__":
    main()
