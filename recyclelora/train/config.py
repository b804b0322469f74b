"""Typed, validated training settings (defaults: the paper's recipe, see reference/method.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from recyclelora.data.subset import check_subset
from recyclelora.data.transform_config import EvalTransformConfig, TrainTransformConfig
from recyclelora.errors import InvalidInputError
from recyclelora.validation import validate_fields

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training loop (stage ``train``); the pipeline sets ``seed`` from ``base.seed``."""

    iterations: int = field(default=40_000, metadata={"help": "optimiser steps", "ge": 1})
    batch_size: int = field(
        default=4,
        metadata={
            "help": "global batch: images per optimiser step, split over torchrun processes and grad_accum",
            "ge": 1,
        },
    )
    grad_accum: int = field(
        default=1,
        metadata={
            "help": "micro-batches per process and step (batch_size must divide by processes x this)",
            "ge": 1,
        },
    )
    lr: float = field(
        default=1e-4,
        metadata={"help": "AdamW base lr, poly-decayed to 0 (the paper: 1e-4 over 40k steps)", "gt": 0},
    )
    poly_power: float = field(
        default=0.9, metadata={"help": "power of the poly learning-rate schedule", "gt": 0}
    )
    weight_decay: float = field(
        default=0.05,
        metadata={
            "help": "weight decay of the decayed groups at step 0, cosine-annealed to weight_decay_end"
        },
    )
    weight_decay_end: float = field(
        default=1e-5, metadata={"help": "end of the cosine weight-decay schedule"}
    )
    betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata={"help": "AdamW betas", "ge": 0, "lt": 1}
    )
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon", "gt": 0})
    backbone_lr_mult: float = field(
        default=0.1, metadata={"help": "backbone lr multiplier under model.tuning=full", "gt": 0}
    )
    grad_clip: float | None = field(
        default=None, metadata={"help": "max gradient norm; null = no clipping", "gt": 0}
    )
    seed: int = field(default=0, metadata={"help": "seeds the data order, augmentation and any random init"})
    device: Device = field(
        default="auto", metadata={"help": "auto (cuda when available, else cpu), cpu or cuda"}
    )
    precision: Precision = field(
        default="auto", metadata={"help": "auto (bf16 autocast on cuda, fp32 on cpu), bf16 or fp32"}
    )
    num_workers: int = field(
        default=2, metadata={"help": "data-loading processes per training process", "ge": 0}
    )
    log_every: int = field(
        default=10, metadata={"help": "steps between logged rows (MLflow curves, train_log.csv)", "ge": 1}
    )
    checkpoint_every: int = field(
        default=1000, metadata={"help": "steps between resumable checkpoints; 0 = final only", "ge": 0}
    )
    val_every: int = field(
        default=0,
        metadata={
            "help": "steps between validations on data.val (val_mIoU); 0 = none during training",
            "ge": 0,
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        validate_fields(self, "train")
        if not 0 <= self.weight_decay_end <= self.weight_decay:
            raise InvalidInputError(
                f"train.weight_decay_end must lie in [0, weight_decay={self.weight_decay}], "
                f"got {self.weight_decay_end!r}"
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data


@dataclass(frozen=True)
class DataConfig:
    """What training reads (stage ``train``): manifests, seeded per-manifest subsets, the transforms."""

    train: tuple[str, ...] = field(metadata={"help": "training manifests, concatenated"})
    val: tuple[str, ...] = field(
        default=(),
        metadata={"help": "validation manifests, one dataset each, scored every train.val_every steps"},
    )
    subset: dict[str, int] = field(
        default_factory=dict,
        metadata={
            "help": "seeded random subsets, {manifest stem: samples kept}, e.g. {gta5_train: 12403}; a "
            "manifest not named is used whole. Each draws with its own generator, seeded by base.seed and "
            "the stem; models/train/train_samples.parquet records what was kept"
        },
    )
    transform: TrainTransformConfig = field(
        default_factory=TrainTransformConfig,
        metadata={"help": "training augmentation, the published mmseg pipeline"},
    )
    val_transform: EvalTransformConfig = field(
        default_factory=EvalTransformConfig,
        metadata={
            "help": "evaluation preprocessing: resize of the image (never of the label), then normalisation; "
            "also used by stages evaluate and export"
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(str(p) for p in self.train))
        object.__setattr__(self, "val", tuple(str(p) for p in self.val))
        if not self.train:
            raise InvalidInputError("data.train must list at least one manifest")
        check_subset(self.train, self.subset, "data.subset")
        validate_fields(self, "data")
