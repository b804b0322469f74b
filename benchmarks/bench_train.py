"""Training speed and peak memory of a params file's configuration (default: the embedded CPU default).

Runs ``--iterations`` steps of ``recyclelora.train.loop.train`` with the params' data, model and training
settings (checkpoints off) and prints iterations per second, excluding model building, and peak memory
(resident set on CPU, allocated memory on CUDA). The data must exist: ``dvc repro data`` makes the default.

    python benchmarks/bench_train.py [--params params.yaml] [--iterations 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import torch

from recyclelora.config import load_params
from recyclelora.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    run = load_params(args.params, sections=("data", "model", "train"))
    config = dataclasses.replace(run.train, iterations=args.iterations, checkpoint_every=0, val_every=0)
    with tempfile.TemporaryDirectory() as out:
        result = train(run.model, config, run.data, out, progress=False)
    device = "cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu"
    print(
        f"{run.model.backbone.name} ({run.model.tuning}, {run.model.adapter.init}), head {run.model.head.kind}, "
        f"batch {config.batch_size} x accum {config.grad_accum}, crop {run.data.transform.crop_size}, "
        f"{device}, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.iterations} iterations in {result.seconds:.1f} s: {result.iterations_per_second:.3f} it/s, "
        f"peak memory {result.peak_memory_mb:.0f} MiB"
    )


if __name__ == "__main__":
    main()
