"""Typed, validated training settings (defaults: the paper's recipe, see reference/method.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from recyclelora.data.dataset import check_subset
from recyclelora.data.transforms import EvalTransformConfig, TrainTransformConfig

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loop settings of one training run."""

    iterations: int = field(default=40_000, metadata={"help": "optimiser steps"})
    batch_size: int = field(
        default=4,
        metadata={"help": "global batch: images per optimiser step, split over processes and grad_accum"},
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per process and optimiser step"})
    lr: float = field(default=1e-4, metadata={"help": "base learning rate (AdamW), poly-decayed to 0"})
    poly_power: float = field(default=0.9, metadata={"help": "power of the poly learning-rate schedule"})
    weight_decay: float = field(default=0.05, metadata={"help": "weight decay of the decayed groups at step 0"})
    weight_decay_end: float = field(default=1e-5, metadata={"help": "weight decay reached by cosine annealing"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    backbone_lr_mult: float = field(default=0.1, metadata={"help": "backbone lr multiplier under tuning=full"})
    grad_clip: float | None = field(default=None, metadata={"help": "max gradient norm; None = no clipping"})
    seed: int = field(default=0, metadata={"help": "seeds the data order, augmentation and any random init"})
    device: Device = field(default="auto", metadata={"help": "auto = cuda when available, else cpu"})
    precision: Precision = field(default="auto", metadata={"help": "auto = bf16 autocast on cuda, fp32 on cpu"})
    num_workers: int = field(default=2, metadata={"help": "data-loading processes per training process"})
    log_every: int = field(default=10, metadata={"help": "steps between logged loss values"})
    checkpoint_every: int = field(default=1000, metadata={"help": "steps between checkpoints (0 = final only)"})
    val_every: int = field(default=0, metadata={"help": "steps between validations (0 = none during training)"})

    def __post_init__(self) -> None:
        positive = ("iterations", "batch_size", "grad_accum", "log_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        for name in ("num_workers", "checkpoint_every", "val_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"train.{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "poly_power", "eps", "backbone_lr_mult"):
            if not getattr(self, name) > 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.weight_decay_end <= self.weight_decay:
            raise ValueError(
                f"train.weight_decay_end must lie in [0, weight_decay={self.weight_decay}], "
                f"got {self.weight_decay_end!r}"
            )
        object.__setattr__(self, "betas", tuple(self.betas))
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two values in [0, 1), got {self.betas!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"train.grad_clip must be > 0 or null, got {self.grad_clip!r}")
        if self.device not in get_args(Device):
            raise ValueError(f"train.device must be one of {get_args(Device)}, got {self.device!r}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"train.precision must be one of {get_args(Precision)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data


@dataclass(frozen=True)
class DataConfig:
    """What to train (and validate) on: manifests, seeded per-manifest subsets, the transforms."""

    train: tuple[str, ...] = field(metadata={"help": "training manifests (concatenated)"})
    val: tuple[str, ...] = field(default=(), metadata={"help": "validation manifests, one dataset each"})
    subset: dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "samples kept by training manifest stem, drawn with seed and stem; others whole"},
    )
    transform: TrainTransformConfig = field(default_factory=TrainTransformConfig)
    val_transform: EvalTransformConfig = field(default_factory=EvalTransformConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(str(p) for p in self.train))
        object.__setattr__(self, "val", tuple(str(p) for p in self.val))
        if not self.train:
            raise ValueError("data.train must list at least one manifest")
        check_subset(self.train, self.subset, "data.subset")
