"""mIoU per target domain of one params key's values over several seeds: a one-factor ablation.

For each value of ``--key`` and each seed, trains the configuration of ``--params`` with that value and seed
(``recyclelora.train.loop.train``; checkpoints and validation off) and scores the trained model on
``eval.targets`` as the ``evaluate`` stage does, then prints a Markdown table of the mean and sample standard
deviation over seeds per target and of their mean, and the per-seed means. The data must exist
(``dvc repro data`` makes the default's).

    python -m benchmarks.ablation --key model.backbone.pyramid --values interpolate learned --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import yaml

from pipeline.compare import cell, pipe_table
from pipeline.stages.evaluate import evaluate_targets
from recyclelora.config import load_params
from recyclelora.train.loop import MODEL_FILE, train


def with_override(params: dict, key: str, value: object) -> dict:
    """A copy of ``params`` with the dotted ``key`` set to ``value`` (the key must exist)."""
    copy = yaml.safe_load(yaml.safe_dump(params))
    *parents, last = key.split(".")
    section = copy
    for name in parents:
        section = section[name]
    if last not in section:
        raise KeyError(f"{key} is not in the params file")
    section[last] = value
    return copy


def score(params: dict, seed: int, work: Path) -> dict[str, float]:
    """Train ``params`` with ``seed`` into ``work`` and return mIoU per target and their mean."""
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(with_override(params, "base.seed", seed)))
    run = load_params(path)
    config = dataclasses.replace(run.train, checkpoint_every=0, val_every=0)
    train(run.model, config, run.data, work / "run", progress=False)
    result = evaluate_targets(
        work / "run" / MODEL_FILE, run.eval, run.data.val_transform, run.train.device, progress=False
    )
    return {name: metrics.miou for name, metrics in result.metrics.items()} | {"mean": result.mean_miou}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--key", required=True, help="dotted params key, e.g. model.backbone.pyramid")
    parser.add_argument("--values", nargs="+", required=True, help="values (YAML scalars) to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text())
    scores: dict[str, list[dict[str, float]]] = {}
    for raw in args.values:
        value = yaml.safe_load(raw)
        for seed in args.seeds:
            began = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                result = score(with_override(params, args.key, value), seed, Path(work))
            scores.setdefault(raw, []).append(result)
            print(f"{args.key}={raw} seed {seed}: mean mIoU {100 * result['mean']:.2f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)  # fmt: skip
    columns = [name for name in next(iter(scores.values()))[0] if name != "mean"] + ["mean"]
    rows = [
        [
            raw,
            *(cell([run[c] for run in runs]) for c in columns),
            ", ".join(f"{100 * run['mean']:.1f}" for run in runs),
        ]
        for raw, runs in scores.items()
    ]
    print("", *pipe_table([args.key, *columns, "per seed"], rows), sep="\n")


if __name__ == "__main__":
    main()
