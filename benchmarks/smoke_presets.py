"""CPU smoke run of a paper preset: ``dvc repro evaluate`` from nothing, in a throwaway copy of the repository.

    python -m benchmarks.smoke_presets paper-g2cbm [paper-gs2cbm ...] [--depth N] [--keep DIR]

For each preset: copy the repository's files (``git ls-files``, tracked and untracked-not-ignored) into a
temporary folder, drop the copied pipeline state (``dvc.lock``, metric files), write tiny raw datasets in
their distributed layouts under ``data/raw/<name>`` (:mod:`tests.pipeline.raw_layouts`: the folders the
presets name; GTAV gets one too, so nothing is downloaded), apply the preset, then overlay only what a CPU
smoke run needs (:func:`smoke_overlay`): a random backbone (``model.backbone.weights: none``; the preset's
DINOv2-L/16 architecture at 512 px, Mask2Former as configured), 2 iterations on the CPU without data workers
or intermediate checkpoints, the GTAV subset clipped to the tiny GTAV. ``--depth N`` also cuts the ViT-L to
N blocks of width 1024 (``model_kwargs: {depth: N}``, ``out_indices`` evenly spaced). Then
``git init`` + commit and ``dvc repro evaluate``: stages data, weights, init, train, merge, evaluate.

Prints one line per preset: wall seconds of ``dvc repro``, peak resident memory of the whole process tree
(DVC and the stage it runs, sampled every 0.1 s with psutil), the mean mIoU (meaningless: random weights, 2
steps) and the stages that ran; then the seconds of each stage (its MLflow child run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from pipeline.presets import apply_preset, read_preset
from recyclelora.models.backbone import default_out_indices
from tests.pipeline.raw_layouts import write_raw_datasets

PROJECT = Path(__file__).resolve().parents[1]
PRESETS = ("paper-g2cbm", "paper-gs2cbm", "paper-gsu2cbm", "paper-c2bm")
#: The stages ``dvc repro evaluate`` runs, in order.
STAGES = ("data", "weights", "init", "train", "merge", "evaluate")
#: The presets' GTAV subset (12,403 frames) clipped to 4 of the tiny GTAV's 6 frames: the seeded draw still
#: drops frames, and 4 fill one batch of train.batch_size = 4.
SMOKE_SUBSET = 4
#: Environment variables of an enclosing DVC experiment / MLflow run that must not leak into the copy.
ENV_DROPPED = ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RECYCLELORA_PARENT_RUN_ID",
               "RECYCLELORA_MLFLOW_DB")  # fmt: skip
GIT = ["git", "-c", "user.name=smoke", "-c", "user.email=smoke@example.com", "-c", "commit.gpgsign=false"]
#: Copied files that are pipeline state of this checkout, not of the copy.
STALE = ("dvc.lock", "metrics")


@dataclass
class SmokeResult:
    """What one smoke run did and measured; ``repo`` is the workspace (gone unless kept)."""

    preset: str
    depth: int | None
    seconds: float
    peak_rss_mib: float
    mean_miou: float | None
    stages_run: list[str]
    stage_seconds: dict[str, float]
    repo: Path
    output: str = field(repr=False)

    def line(self) -> str:
        miou = "n/a" if self.mean_miou is None else f"{self.mean_miou:.4f}"
        return (
            f"{self.preset} depth={self.depth or 24}: {self.seconds:.1f} s, peak RSS {self.peak_rss_mib:,.0f} MiB, "
            f"mean mIoU {miou}, stages {','.join(self.stages_run)}"
        )


def copy_workspace(dest: Path, source: Path = PROJECT) -> Path:
    """Copy the files Git sees in ``source`` (tracked, and untracked but not ignored) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        path = source / name
        if path.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name)
    for name in STALE:
        target = dest / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return dest


def preset_settings(repo: Path, preset: str) -> dict[str, Any]:
    """The preset's keys (``presets/<preset>.yaml`` of ``repo``, its bases resolved)."""
    return read_preset(repo / "presets" / f"{preset}.yaml")


def smoke_overlay(preset: dict[str, Any], raw: dict[str, Path], depth: int | None) -> dict[str, Any]:
    """The params written over ``preset`` for a CPU smoke run; everything else stays the preset's."""
    overlay: dict[str, Any] = {
        "datasets": {"real": {name: raw[name].as_posix() for name in preset["datasets"]["real"]}},
        "model": {"backbone": {"weights": "none"}},
        "train": {"iterations": 2, "num_workers": 0, "checkpoint_every": 0, "device": "cpu"},
    }
    subset = preset["data"]["subset"]
    if subset:
        overlay["data"] = {"subset": {stem: min(size, SMOKE_SUBSET) for stem, size in subset.items()}}
    if depth is not None:
        overlay["model"]["backbone"] |= {
            "model_kwargs": {"depth": depth},
            "out_indices": list(default_out_indices(depth)),
        }
    return overlay


def _env(repo: Path) -> dict[str, str]:
    """The environment of the copy's commands: its own code first on the path (a snapshot of this checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    return env | {"DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}


def prepare_workspace(repo: Path, preset: str, depth: int | None) -> dict[str, Any]:
    """Copy the repository to ``repo``, write the tiny raw data, apply preset and overlay, commit it all.

    Returns the overlay written over the preset.
    """
    repo.mkdir(parents=True, exist_ok=True)
    copy_workspace(repo)
    settings = preset_settings(repo, preset)
    names = list(settings["datasets"]["real"])
    raw = {name: Path("data/raw") / name for name in names}  # the presets' folders; data/raw is git-ignored
    write_raw_datasets(names, repo / "data" / "raw")
    apply_preset(repo / "params.yaml", preset)
    overlay = smoke_overlay(settings, raw, depth)
    overlay_file = repo / "smoke.yaml"
    overlay_file.write_text(yaml.safe_dump(overlay, sort_keys=False))
    apply_preset(repo / "params.yaml", str(overlay_file))
    overlay_file.unlink()
    env = _env(repo)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", f"{preset} smoke"]):
        subprocess.run(GIT + args, cwd=repo, env=env, check=True, capture_output=True)
    return overlay


class TreeMemory:
    """Peak summed RSS of a process and its descendants, sampled in a thread every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    total += process.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def stage_seconds(repo: Path) -> dict[str, float]:
    """Wall seconds of each stage's MLflow child run in the copy's store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    experiment = client.get_experiment_by_name("recyclelora")
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id])
    return {
        run.info.run_name: (run.info.end_time - run.info.start_time) / 1000
        for run in runs
        if "mlflow.parentRunId" in run.data.tags and run.info.end_time
    }


def repro(repo: Path, timeout: float | None = None) -> tuple[float, float, str]:
    """``dvc repro evaluate`` in ``repo``: (wall seconds, peak tree RSS in MiB, combined output)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        ["dvc", "repro", "evaluate"], cwd=repo, env=_env(repo),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    memory = TreeMemory(process.pid)
    memory.start()
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise RuntimeError(f"dvc repro evaluate ran past {timeout} s in {repo}:\n{output[-5000:]}") from None
    finally:
        memory.stop()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"dvc repro evaluate failed ({process.returncode}) in {repo}:\n{output[-8000:]}")
    return seconds, memory.peak / 2**20, output


def run_smoke(
    preset: str, depth: int | None = None, workdir: Path | None = None, timeout: float | None = None
) -> SmokeResult:
    """Prepare a workspace for ``preset`` under ``workdir`` (a new temporary folder if None) and reproduce it
    up to ``evaluate``; the workspace is left in place (``result.repo``)."""
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"smoke-{preset}-"))
    repo = root / "repo"
    prepare_workspace(repo, preset, depth)
    seconds, peak, output = repro(repo, timeout)
    ran = [name for name in STAGES if f"Running stage '{name}'" in output]
    metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    return SmokeResult(
        preset, depth, seconds, peak, metrics.get("mean_mIoU"), ran, stage_seconds(repo), repo, output
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "presets", nargs="+", choices=PRESETS, help="paper presets to run, one after the other"
    )
    parser.add_argument("--depth", type=int, default=None, help="ViT-L blocks (default: the preset's 24)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the workspaces under this folder")
    args = parser.parse_args()
    for preset in args.presets:
        workdir = None if args.keep is None else args.keep / preset
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix=f"smoke-{preset}-") as tmp:
                result = run_smoke(preset, args.depth, Path(tmp))
        else:
            result = run_smoke(preset, args.depth, workdir)
        print(result.line(), flush=True)
        stages = ", ".join(
            f"{name} {result.stage_seconds[name]:.1f}" for name in STAGES if name in result.stage_seconds
        )
        print(f"  stage seconds (MLflow runs): {stages}", flush=True)


if __name__ == "__main__":
    main()
