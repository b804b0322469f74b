"""The iteration-based training loop: AdamW with the recipe's groups and schedules, checkpoints, resume, DDP.

Every source of randomness is seeded and restored on resume: the data order (:class:`BatchOrder`), the
augmentation (seed, epoch, index), torch's generator (drop path, Mask2Former's point sampling). A run resumed
from a checkpoint therefore reproduces the losses of an uninterrupted run.

A stop signal (:data:`~recyclelora.signals.STOP_SIGNALS`: Ctrl-C, ``kill``, a scheduler's preemption notice)
lets the current step finish, checkpoints it and raises :class:`~recyclelora.signals.Interrupted`; a full disk
while checkpointing raises :class:`DiskFullError`. Either way the latest checkpoint is whole, and ``resume``
continues from it exactly.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recyclelora.data.dataset import SegmentationDataset, write_kept_samples
from recyclelora.data.manifest import common_classes
from recyclelora.data.transforms import EvalTransform, TrainTransform
from recyclelora.errors import InvalidInputError, UserError
from recyclelora.eval.evaluate import evaluate
from recyclelora.eval.predictors import TorchPredictor
from recyclelora.io import atomic_dir, atomic_path, atomic_write_text, flatten
from recyclelora.models.build import build_segmentor
from recyclelora.models.checkpoint import read_checkpoint_info, read_tensors, save_segmentor
from recyclelora.models.config import ModelConfig
from recyclelora.models.segmentor import Segmentor
from recyclelora.signals import STOP_SIGNALS, Interrupted, deferred_stop_signals
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

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left in place."""


class DiskFullError(UserError):
    """The disk (or the user's quota) filled up while a checkpoint was written; the one before it is intact."""


#: errno values of a full disk and of an exhausted quota.
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _out_of_space(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised from or while handling, is a full disk or quota. torch's writer
    raises a RuntimeError while handling the OSError of its file; safetensors' only says so in its text."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _FULL_DISK:
            return True
        if any(f"(os error {code})" in str(error) for code in _FULL_DISK):
            return True
        error = error.__cause__ or error.__context__
    return False


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
            worker_init_fn=_exit_on_sigterm_from_parent if _SHIELD_WORKERS else None,
        )
        with _stop_signals_blocked() if _SHIELD_WORKERS else nullcontext():
            iterator = iter(loader)  # starts the workers
        yield from iterator
        epoch, offset = epoch + 1, 0


#: DataLoader workers ignore stop signals but their parent's SIGTERM (where the platform says who sent a signal).
_SHIELD_WORKERS = hasattr(signal, "sigwaitinfo")


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block :data:`STOP_SIGNALS` in this thread inside the block; one that arrives meanwhile is delivered after.

    DataLoader workers forked inside inherit the mask and keep it: a signal to the whole process group (Ctrl-C,
    torchrun's forwarded one, a scheduler's) then reaches the training process alone, which stops at a whole step,
    instead of killing a worker (whose death would fail the run mid-step).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _exit_on_sigterm_from_parent(worker_id: int) -> None:
    """In a DataLoader worker (stop signals blocked): a thread takes each SIGTERM and ends the worker when the
    training process sent it (multiprocessing's ``terminate()`` of workers left at exit, which would otherwise
    wait for them forever); anyone else's is dropped."""

    def wait() -> None:
        parent = os.getppid()
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-parent", daemon=True).start()


def _checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step:07d}"


def _step(folder: Path) -> int:
    """The step number of a checkpoint folder's name."""
    return int(folder.name.removeprefix("step_"))


def _checkpoint_dirs(root: Path) -> list[Path]:
    """The checkpoint folders under ``root`` (not partial ones), ordered by step number."""
    folders = [p for p in root.glob("step_*") if p.is_dir() and p.name.removeprefix("step_").isdigit()]
    return sorted(folders, key=_step)


#: Training settings that do not change what is optimised: a resumed run may change them.
LOOP_SETTINGS = frozenset({"num_workers", "log_every", "checkpoint_every", "val_every", "device"})


def run_settings(config: TrainConfig, data: DataConfig) -> dict[str, object]:
    """What determines the optimisation, flattened to dotted keys: ``train.*`` (but :data:`LOOP_SETTINGS`)
    and ``data.*``, as JSON values."""
    settings = {"train": {k: v for k, v in config.to_dict().items() if k not in LOOP_SETTINGS}, "data": asdict(data)}
    return flatten(json.loads(json.dumps(settings, default=str)))


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
        raise InvalidInputError(
            f"{out_dir} already holds a training run: continue it with --resume (resume=True), or remove the "
            "folder (or choose another) to start over"
        )
    info = distributed.setup(config.device)
    try:
        with distributed.stop_on_peer_failure(info):  # a failed collective ends the process with one line
            trainer = _Trainer(model_config, config, data, out_dir, info, cache_dir)
            if resume:
                trainer.resume()
            seconds = trainer.run(on_log, progress)
            return trainer.finish(seconds)
    finally:
        distributed.teardown()


class _Trainer:
    """One process's part of a run, step by step: built seeded (``__init__``), :meth:`resume`, :meth:`run`
    (:meth:`train_step` per iteration, :meth:`log` / :meth:`validate` / :meth:`save` when due), :meth:`finish`.

    ``start`` (the step this process began at) and ``history`` (the logged rows) are where the run stands.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        data: DataConfig,
        out_dir: Path,
        info: distributed.DistInfo,
        cache_dir: str | Path | None,
    ) -> None:
        self.classes = common_classes((*data.train, *data.val), "data.train and data.val")
        model_config = model_config.for_classes(self.classes)
        self.model_config, self.config, self.data = model_config, config, data
        self.out_dir, self.info = out_dir, info
        torch.manual_seed(config.seed)
        self.dataset = SegmentationDataset(
            data.train, TrainTransform(data.transform), subset=data.subset, seed=config.seed
        )
        self.order = BatchOrder(
            len(self.dataset), config.batch_size, config.seed, info.rank, info.world_size, config.grad_accum
        )
        generator = torch.Generator().manual_seed(config.seed)
        self.built = build_segmentor(model_config, cache_dir=cache_dir, generator=generator)
        self.model = self.built.model.to(info.device)
        self.optimizer = build_optimizer(self.model, model_config, config)
        self.settings = run_settings(config, data)
        use_bf16 = config.precision == "bf16" or (config.precision == "auto" and info.device.type == "cuda")
        self.autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
        self.start = 0
        self.history: list[dict[str, float]] = []

    def resume(self) -> None:
        """Continue from ``checkpoints/latest`` (model, optimiser, RNG, step, history), or from step 0 without one.

        A checkpoint trained with other settings (:func:`run_settings`, the model's) is refused, naming each change.
        """
        checkpoint = _latest_checkpoint(self.out_dir)
        if checkpoint is None:
            if self.info.is_main:
                logger.info("no checkpoint under %s: starting from step 0", self.out_dir / "checkpoints")
            return
        saved = read_checkpoint_info(checkpoint / MODEL_FILE).config
        trainer_state = load_trainer_state(checkpoint)
        changed = _changes(flatten({"model": saved.to_dict()}), flatten({"model": self.model_config.to_dict()}))
        if "settings" in trainer_state:  # checkpoints written before settings were recorded have none
            changed += _changes(json.loads(trainer_state["settings"]), self.settings)
        if changed:
            raise InvalidInputError(
                f"cannot resume from {checkpoint}: it was trained with other settings ({'; '.join(changed)}); "
                "resume with the run's settings, or train into a new folder"
            )
        tensors = read_tensors(checkpoint / MODEL_FILE, self.info.device)
        self.model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("init.")}, strict=False)
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        set_rng_state(trainer_state["rng"])
        self.start, self.history = trainer_state["step"], json.loads(trainer_state["history"])

    def run(self, on_log: Callable[[dict[str, float]], None] | None, progress: bool) -> float:
        """Train from ``start`` to ``config.iterations``, logging and checkpointing when due; the seconds it took."""
        config, info = self.config, self.info
        forward: nn.Module = _TrainForward(self.model)
        if info.world_size > 1:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            forward = DistributedDataParallel(forward, device_ids=device_ids)
        batches = _batches(self.dataset, self.order, self.start * config.grad_accum, config.num_workers)
        self.model.train()
        if info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(info.device)
        bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                       TimeRemainingColumn(), disable=not (progress and info.is_main))  # fmt: skip
        began = time.perf_counter()
        with bar, deferred_stop_signals() as stop:
            task = bar.add_task("train", total=config.iterations, completed=self.start, status="")
            for step in range(self.start, config.iterations):
                losses = self.train_step(forward, batches, step)
                done = step + 1
                if done % config.log_every == 0 or done == config.iterations:
                    row = self.log(done, losses)
                    if on_log is not None and info.is_main:
                        on_log(row)
                    bar.update(task, status=f"loss {row['loss']:.4f}")
                bar.update(task, completed=done)
                if done == config.iterations:
                    break  # finish() saves the last step, signal or not
                signum = distributed.agree_on_stop(stop.signum, info)  # every process stops at the same step
                if signum or (config.checkpoint_every and done % config.checkpoint_every == 0):
                    if info.is_main:
                        self.save(done)
                    distributed.barrier(info)
                if signum:
                    raise Interrupted(
                        f"training stopped by {signal.Signals(signum).name} at step {done} of {config.iterations}: "
                        f"checkpoint saved in {_checkpoint_dir(self.out_dir, done)}; continue with --resume (the DVC "
                        "stage resumes by itself on `dvc repro`)",
                        signum,
                    )
        return time.perf_counter() - began

    def train_step(self, forward: nn.Module, batches: Iterator[dict[str, torch.Tensor]], step: int) -> dict[str, float]:
        """One optimiser update over ``grad_accum`` micro-batches; its losses by sorted name, averaged over the
        micro-batches and the processes. A non-finite loss stops the run before the update."""
        config, info = self.config, self.info
        apply_schedules(self.optimizer, step, config)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro in range(config.grad_accum):
            batch = next(batches)
            images = batch["image"].to(info.device, non_blocking=True)
            labels = batch["label"].to(info.device, non_blocking=True)
            sync = micro == config.grad_accum - 1 or info.world_size == 1
            with self.autocast, (nullcontext() if sync else forward.no_sync()):
                losses = forward(images, labels)
                (losses["loss"] / config.grad_accum).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() / config.grad_accum
        keys = sorted(totals)
        means = dict(zip(keys, distributed.mean_across(torch.stack([totals[k] for k in keys]), info).tolist()))
        if not all(math.isfinite(v) for v in means.values()):
            raise NonFiniteLossError(
                f"non-finite loss at step {step} ({means}): nothing was saved after the last checkpoint in "
                f"{self.out_dir / 'checkpoints'}; lower train.lr or check the data"
            )
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        return means

    def log(self, done: int, losses: dict[str, float]) -> dict[str, float]:
        """Append the row of step ``done`` to ``history``: its losses, learning rate and, when due, validation."""
        row = {"step": done, **losses, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.config.val_every and (done % self.config.val_every == 0 or done == self.config.iterations):
            row |= self.validate()
            distributed.barrier(self.info)
        self.history.append(row)
        return row

    def validate(self) -> dict[str, float]:
        """mIoU per validation dataset (whole-image inference) and their mean, on the main process."""
        if not self.data.val or not self.info.is_main:
            return {}
        self.model.eval()
        sets = {Path(m).stem: SegmentationDataset(m, EvalTransform(self.data.val_transform)) for m in self.data.val}
        with self.autocast:
            result = evaluate(
                TorchPredictor(self.model, self.info.device),
                sets,
                sliding=None,
                classes=self.classes,
                progress=False,
            )
        self.model.train()
        return {f"val_mIoU/{name}": m.miou for name, m in result.metrics.items()} | {"val_mIoU": result.mean_miou}

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (main process): its folder written whole, then ``latest`` pointed at it; keep the
        last :data:`KEEP_CHECKPOINTS` and rewrite the loss log."""
        folder = _checkpoint_dir(self.out_dir, step)
        with self.disk_full_is_one_line(f"the checkpoint of step {step}"):
            with atomic_dir(folder) as partial:
                built = self.built
                save_segmentor(partial / MODEL_FILE, self.model, self.model_config, init_factors=built.init_factors,
                               backbone_sha256=built.backbone_sha256, classes=self.classes,
                               metadata={"step": str(step)})  # fmt: skip
                extra = {"history": json.dumps(self.history), "settings": json.dumps(self.settings)}
                save_trainer_state(partial, step=step, optimizer=self.optimizer, extra=extra)
            atomic_write_text(folder.parent / "latest", folder.name)
            for old in _checkpoint_dirs(folder.parent)[:-KEEP_CHECKPOINTS]:
                shutil.rmtree(old)
            _write_log(self.out_dir / LOG_FILE, self.history)

    @contextmanager
    def disk_full_is_one_line(self, what: str) -> Iterator[None]:
        """Turn a full disk or quota inside the block (the atomic writers leave nothing half-written) into
        :class:`DiskFullError`, naming ``what`` was being written and the checkpoint that is intact."""
        try:
            yield
        except Exception as error:
            if not _out_of_space(error):
                raise
            latest = _latest_checkpoint(self.out_dir)
            kept = f"the checkpoint of step {_step(latest)} is intact" if latest else "no checkpoint was written yet"
            raise DiskFullError(
                f"no space left on device while writing {what} in {self.out_dir}: {kept}; free space and "
                "continue with --resume"
            ) from error

    def finish(self, seconds: float) -> TrainResult:
        """Save the last checkpoint, copy its model to ``out_dir/model.safetensors``, write the summary."""
        config, info = self.config, self.info
        final = self.out_dir / MODEL_FILE
        if info.is_main:
            self.save(config.iterations)
            with self.disk_full_is_one_line("the final model"), atomic_path(final) as tmp:
                shutil.copyfile(_checkpoint_dir(self.out_dir, config.iterations) / MODEL_FILE, tmp)  # serialised once
        distributed.barrier(info)
        steps = config.iterations - self.start
        peak = torch.cuda.max_memory_allocated(info.device) / 2**20 if info.device.type == "cuda" else _peak_rss_mb()
        result = TrainResult(final, self.history, seconds, steps / seconds if seconds else 0.0, peak)
        if info.is_main:
            with self.disk_full_is_one_line("the run's summary"):
                self.write_summary(result)
        return result

    def write_summary(self, result: TrainResult) -> None:
        """``train_summary.json`` (the run's figures) and ``train_samples.parquet`` (the samples trained on)."""
        config, history = self.config, self.history
        summary = {"iterations": config.iterations, "resumed_from": self.start, "seconds": round(result.seconds, 3),
                   "iterations_per_second": round(result.iterations_per_second, 4),
                   "peak_memory_mb": round(result.peak_memory_mb, 1), "world_size": self.info.world_size,
                   "seed": config.seed, "train_samples": len(self.dataset),
                   "final_loss": history[-1]["loss"] if history else None,
                   **{f"trainable_parameters/{part}": n for part, n in self.model.trainable_parameters().items()},
                   }  # fmt: skip
        atomic_write_text(self.out_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        write_kept_samples(self.out_dir / SAMPLES_FILE, self.dataset.kept)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux/macOS ``ru_maxrss``)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
