"""The iteration-based training loop: AdamW with the recipe's groups and schedules, checkpoints, resume, DDP.

Every source of randomness is seeded and restored on resume: the data order (:class:`BatchOrder`), the
augmentation (seed, epoch, index), torch's generator (drop path, Mask2Former's point sampling). A run resumed
from a checkpoint therefore reproduces the losses of an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recyclelora.data.dataset import SegmentationDataset, write_kept_samples
from recyclelora.data.transforms import EvalTransform, TrainTransform
from recyclelora.errors import UserError
from recyclelora.eval.evaluate import evaluate
from recyclelora.eval.predictors import TorchPredictor
from recyclelora.io import atomic_path, atomic_write_text
from recyclelora.models.build import ModelConfig, build_segmentor
from recyclelora.models.checkpoint import read_checkpoint_info, read_tensors, save_segmentor
from recyclelora.models.segmentor import Segmentor
from recyclelora.train import distributed
from recyclelora.train.config import DataConfig, TrainConfig
from recyclelora.train.optim import apply_schedules, build_optimizer
from recyclelora.train.sampler import BatchOrder
from recyclelora.train.state import load_trainer_state, save_trainer_state, set_rng_state

MODEL_FILE = "model.safetensors"
LOG_FILE = "train_log.csv"
SUMMARY_FILE = "train_summary.json"
#: The record of the samples trained on (manifest, row, name, image; data.subset's draws), in the run folder.
SAMPLES_FILE = "train_samples.parquet"
KEEP_CHECKPOINTS = 2


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left in place."""


@dataclass
class TrainResult:
    """Where the final model is and what the run measured."""

    model_path: Path
    history: list[dict[str, float]]
    seconds: float
    iterations_per_second: float
    peak_memory_mb: float


class _TrainForward(nn.Module):
    """Routes ``forward`` to the segmentor's losses, so DDP's forward (and its gradient hooks) run."""

    def __init__(self, segmentor: Segmentor) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.segmentor.forward_train(images, labels)


def _batches(
    dataset: SegmentationDataset, order: BatchOrder, start: int, num_workers: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches from number ``start`` on; one DataLoader per epoch so workers see the epoch's augmentation."""
    epoch, offset = divmod(start, order.batches_per_epoch)
    while True:
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=order.epoch_batches(epoch)[offset:],
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(order.seed + epoch),  # leaves the global generator alone
            pin_memory=torch.cuda.is_available(),
        )
        yield from loader
        epoch, offset = epoch + 1, 0


def _checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step:07d}"


def _checkpoint_dirs(root: Path) -> list[Path]:
    """The checkpoint folders under ``root``, ordered by step number."""
    return sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.removeprefix("step_")))


#: Training settings that do not change what is optimised: a resumed run may change them.
LOOP_SETTINGS = frozenset({"num_workers", "log_every", "checkpoint_every", "val_every", "device"})


def run_settings(config: TrainConfig, data: DataConfig) -> dict[str, object]:
    """What determines the optimisation, flattened to dotted keys: ``train.*`` (but :data:`LOOP_SETTINGS`)
    and ``data.*``, as JSON values."""
    settings = {"train": {k: v for k, v in config.to_dict().items() if k not in LOOP_SETTINGS}, "data": asdict(data)}
    return _flatten(json.loads(json.dumps(settings, default=str)))


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _changes(saved: dict[str, object], current: dict[str, object]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs."""
    return [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(saved.keys() | current.keys())
        if saved.get(key) != current.get(key)
    ]


def _latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = out_dir / "checkpoints" / pointer.read_text().strip()
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {folder}, which holds no {MODEL_FILE}: the checkpoint is incomplete")
    return folder


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "step", k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    data: DataConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model_config`` on ``data`` for ``config.iterations`` steps; write checkpoints under ``out_dir``.

    ``config.batch_size`` images make one optimiser step whatever the launch: under ``torchrun`` each process
    trains on its share of the global batch (DDP), in ``grad_accum`` micro-batches. ``resume`` continues from
    ``out_dir/checkpoints/latest``. The final model goes to ``out_dir/model.safetensors``, the loss curve to
    ``train_log.csv``, the run's figures to ``train_summary.json`` and the samples trained on to
    ``train_samples.parquet``.
    """
    out_dir = Path(out_dir)
    if not resume and ((out_dir / "checkpoints").exists() or (out_dir / MODEL_FILE).exists()):
        raise ValueError(
            f"{out_dir} already holds a training run: continue it with --resume (resume=True), or remove the "
            "folder (or choose another) to start over"
        )
    info = distributed.setup(config.device)
    try:
        with distributed.stop_on_peer_failure(info):  # a failed collective ends the process with one line
            return _train(model_config, config, data, out_dir, info, resume, cache_dir, on_log, progress)
    finally:
        distributed.teardown()


def _train(
    model_config: ModelConfig,
    config: TrainConfig,
    data: DataConfig,
    out_dir: Path,
    info: distributed.DistInfo,
    resume: bool,
    cache_dir: str | Path | None,
    on_log: Callable[[dict[str, float]], None] | None,
    progress: bool,
) -> TrainResult:
    torch.manual_seed(config.seed)
    dataset = SegmentationDataset(data.train, TrainTransform(data.transform), subset=data.subset, seed=config.seed)
    order = BatchOrder(len(dataset), config.batch_size, config.seed, info.rank, info.world_size, config.grad_accum)
    built = build_segmentor(model_config, cache_dir=cache_dir, generator=torch.Generator().manual_seed(config.seed))
    model = built.model.to(info.device)
    optimizer = build_optimizer(model, model_config, config)
    start, history, settings = 0, [], run_settings(config, data)
    checkpoint = _latest_checkpoint(out_dir) if resume else None
    if resume and checkpoint is None and info.is_main:
        print(f"no checkpoint under {out_dir / 'checkpoints'}: starting from step 0")
    if checkpoint is not None:
        saved = read_checkpoint_info(checkpoint / MODEL_FILE).config
        trainer_state = load_trainer_state(checkpoint)
        changed = _changes(_flatten({"model": saved.to_dict()}), _flatten({"model": model_config.to_dict()}))
        if "settings" in trainer_state:  # checkpoints written before settings were recorded have none
            changed += _changes(json.loads(trainer_state["settings"]), settings)
        if changed:
            raise ValueError(
                f"cannot resume from {checkpoint}: it was trained with other settings ({'; '.join(changed)}); "
                "resume with the run's settings, or train into a new folder"
            )
        tensors = read_tensors(checkpoint / MODEL_FILE, info.device)
        state = {k: v for k, v in tensors.items() if not k.startswith("init.")}
        model.load_state_dict(state, strict=False)
        optimizer.load_state_dict(trainer_state["optimizer"])
        set_rng_state(trainer_state["rng"])
        start, history = trainer_state["step"], json.loads(trainer_state["history"])

    forward: nn.Module = _TrainForward(model)
    if info.world_size > 1:
        forward = DistributedDataParallel(forward, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and info.device.type == "cuda")
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    batches = _batches(dataset, order, start * config.grad_accum, config.num_workers)
    model.train()

    def validate() -> dict[str, float]:
        """mIoU per validation dataset (whole-image inference) and their mean, on the main process."""
        if not data.val or not info.is_main:
            return {}
        model.eval()
        sets = {Path(m).stem: SegmentationDataset(m, EvalTransform(data.val_transform)) for m in data.val}
        with autocast:
            result = evaluate(TorchPredictor(model, info.device), sets, sliding=None, progress=False)
        model.train()
        return {f"val_mIoU/{name}": m.miou for name, m in result.metrics.items()} | {"val_mIoU": result.mean_miou}

    def save(step: int) -> None:
        if not info.is_main:
            return
        folder = _checkpoint_dir(out_dir, step)
        root = folder.parent
        partial = root / f".partial_{folder.name}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_segmentor(partial / MODEL_FILE, model, model_config, backbone_sha256=built.backbone_sha256,
                       init_factors=built.init_factors, metadata={"step": str(step)})  # fmt: skip
        extra = {"history": json.dumps(history), "settings": json.dumps(settings)}
        save_trainer_state(partial, step=step, optimizer=optimizer, extra=extra)
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        atomic_write_text(root / "latest", folder.name)
        for old in _checkpoint_dirs(root)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)
        _write_log(out_dir / LOG_FILE, history)

    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                   TimeRemainingColumn(), disable=not (progress and info.is_main))  # fmt: skip
    began = time.perf_counter()
    with bar:
        task = bar.add_task("train", total=config.iterations, completed=start, status="")
        for step in range(start, config.iterations):
            apply_schedules(optimizer, step, config)
            optimizer.zero_grad(set_to_none=True)
            totals: dict[str, torch.Tensor] = {}
            for micro in range(config.grad_accum):
                batch = next(batches)
                images = batch["image"].to(info.device, non_blocking=True)
                labels = batch["label"].to(info.device, non_blocking=True)
                sync = micro == config.grad_accum - 1 or info.world_size == 1
                with autocast, (nullcontext() if sync else forward.no_sync()):
                    losses = forward(images, labels)
                    (losses["loss"] / config.grad_accum).backward()
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + value.detach().float() / config.grad_accum
            keys = sorted(totals)
            values = distributed.mean_across(torch.stack([totals[k] for k in keys]), info).tolist()
            if not all(math.isfinite(v) for v in values):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} ({dict(zip(keys, values))}): nothing was saved after the last "
                    f"checkpoint in {out_dir / 'checkpoints'}; lower train.lr or check the data"
                )
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            done = step + 1
            if done % config.log_every == 0 or done == config.iterations:
                row = {"step": done, **dict(zip(keys, values)), "lr": optimizer.param_groups[0]["lr"]}
                if config.val_every and (done % config.val_every == 0 or done == config.iterations):
                    row |= validate()
                    distributed.barrier(info)
                history.append(row)
                if on_log is not None and info.is_main:
                    on_log(row)
                bar.update(task, status=f"loss {row['loss']:.4f}")
            bar.update(task, completed=done)
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.iterations:
                save(done)
                distributed.barrier(info)
    seconds = time.perf_counter() - began
    final = out_dir / MODEL_FILE
    if info.is_main:
        save(config.iterations)
        with atomic_path(final) as tmp:  # the final checkpoint's model file, serialised once
            shutil.copyfile(_checkpoint_dir(out_dir, config.iterations) / MODEL_FILE, tmp)
    distributed.barrier(info)
    steps = config.iterations - start
    peak = torch.cuda.max_memory_allocated(info.device) / 2**20 if info.device.type == "cuda" else _peak_rss_mb()
    result = TrainResult(final, history, seconds, steps / seconds if seconds else 0.0, peak)
    if info.is_main:
        summary = {"iterations": config.iterations, "resumed_from": start, "seconds": round(seconds, 3),
                   "iterations_per_second": round(result.iterations_per_second, 4),
                   "peak_memory_mb": round(peak, 1), "world_size": info.world_size, "seed": config.seed,
                   "train_samples": len(dataset), "final_loss": history[-1]["loss"] if history else None,
                   **{f"trainable_parameters/{part}": count for part, count in model.trainable_parameters().items()},
                   }  # fmt: skip
        atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        write_kept_samples(out_dir / SAMPLES_FILE, dataset.kept)
    return result


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux/macOS ``ru_maxrss``)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
