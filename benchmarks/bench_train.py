"""Training speed and peak memory of a configuration in fp32 and bf16, and the hours its full run would take.

Runs ``--iterations`` steps of ``recyclelora.train.loop.train`` (checkpoints and validation off) with the data,
model and training settings of ``--params``, or of a preset written over it (``--preset paper-g2cbm``), once per
``--precision``, and prints iterations per second (model building excluded), peak memory (allocated memory on
CUDA, resident set on CPU) and the projected hours for the configuration's ``train.iterations`` (40,000 for the
paper presets). Without the paper's datasets, ``--train-manifest`` trains on any prepared manifest instead (the
embedded benchmark's after ``dvc repro data``): crops, batch and model stay the preset's, so the speed does
too. ``--weights none`` builds the backbone with random weights when the model hub is out of reach.

    python -m benchmarks.bench_train                                  # the embedded CPU default
    python -m benchmarks.bench_train --preset paper-g2cbm --weights none \\
        --train-manifest data/prepared/synth_src_train.parquet --precision fp32 bf16 --iterations 20
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch

from pipeline.presets import apply_preset, preset_file
from recyclelora.config import RunConfig, load_params
from recyclelora.train.loop import train


def run_config(params: Path, preset: str | None, weights: str | None, manifest: str | None) -> RunConfig:
    """The params' run config, with ``preset`` written over a copy of them and the overrides applied."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "params.yaml"
        shutil.copyfile(params, copy)
        if preset is not None:
            apply_preset(copy, str(preset_file(params, preset)))
        run = load_params(copy, sections=("data", "model", "train"))
    if weights is not None:
        backbone = dataclasses.replace(run.model.backbone, weights=weights)
        run = dataclasses.replace(run, model=dataclasses.replace(run.model, backbone=backbone))
    if manifest is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, train=(manifest,), subset={}))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--preset", help="a preset name (presets/<name>.yaml) or file written over --params")
    parser.add_argument("--weights", help="replace model.backbone.weights, e.g. none (random) without a hub")
    parser.add_argument("--train-manifest", help="train on this manifest instead of data.train")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    run = run_config(args.params, args.preset, args.weights, args.train_manifest)
    full_run = run.train.iterations
    print(
        f"{args.preset or args.params}: {run.model.backbone.name} ({run.model.tuning}, {run.model.adapter.init}), "
        f"head {run.model.head.kind}, batch {run.train.batch_size} x accum {run.train.grad_accum}, "
        f"crop {run.data.transform.crop_size}, {torch.get_num_threads()} threads"
    )
    for precision in args.precision:
        config = dataclasses.replace(
            run.train, iterations=args.iterations, checkpoint_every=0, val_every=0, precision=precision
        )
        with tempfile.TemporaryDirectory() as out:
            result = train(run.model, config, run.data, out, progress=False)
        device = "cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu"
        hours = full_run / result.iterations_per_second / 3600
        print(
            f"{precision} on {device}: {args.iterations} iterations in {result.seconds:.1f} s, "
            f"{result.iterations_per_second:.3f} it/s, peak memory {result.peak_memory_mb:.0f} MiB, "
            f"{full_run} iterations in {hours:.1f} h"
        )


if __name__ == "__main__":
    main()
