"""Helpers of the CLI tests: a tiny adapter segmentor saved as a checkpoint, tiny labelled datasets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from recyclelora.adapters import AdapterConfig, adapter_layers
from recyclelora.cli.main import app
from recyclelora.data.classes import IGNORE_INDEX, NUM_CLASSES
from recyclelora.data.manifest import write_manifest
from recyclelora.io import sha256_file
from recyclelora.models import (
    BackboneConfig,
    HeadConfig,
    ModelConfig,
    Segmentor,
    build_segmentor,
    save_segmentor,
)

runner = CliRunner()

SIZE = 56
TINY_VIT = {"embed_dim": 48, "depth": 4, "num_heads": 2, "init_values": 1.0}
RANK_MAIN, RANK_SUB = 4, 2


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: tiny tensors gain nothing from more, and MKL's threads crawl (e.g. a 144 x 48
    SVD in 1 s instead of 0.3 ms) on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tiny_config(num_classes: int = NUM_CLASSES, tuning: str = "adapters") -> ModelConfig:
    return ModelConfig(
        backbone=BackboneConfig(weights="none", img_size=SIZE, model_kwargs=dict(TINY_VIT)),
        head=HeadConfig(kind="light", channels=32, num_classes=num_classes),
        tuning=tuning,
        adapter=AdapterConfig(rank_main=RANK_MAIN, rank_sub=RANK_SUB),
    )


def perturb_adapters(model: Segmentor, seed: int) -> None:
    """Add noise to every adapter tensor, as training would change them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for param in (layer.lora_A_main, layer.lora_B_main, layer.lora_A_sub, layer.lora_B_sub):
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


def save_tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    trained: bool = True,
    num_classes: int = NUM_CLASSES,
    tuning: str = "adapters",
) -> Path:
    """A tiny segmentor (random backbone, light head) saved with save_segmentor; ``trained`` perturbs its
    adapters, otherwise they stay at their RRQR initialisation."""
    torch.manual_seed(seed)
    config = tiny_config(num_classes, tuning)
    built = build_segmentor(config)
    if trained:
        perturb_adapters(built.model, seed)
    return save_segmentor(
        path, built.model, config, backbone_sha256=built.backbone_sha256, init_factors=built.init_factors
    )


def write_dataset(
    root: Path, dataset: str, split: str, stems: list[str], *, seed: int, height: int = SIZE, width: int = 84
) -> Path:
    """Random images and trainId labels (some ignored) under ``root/dataset/split``, and their manifest."""
    rng = np.random.default_rng(seed)
    folder = root / dataset / split
    folder.mkdir(parents=True)
    rows = []
    for stem in stems:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        label = rng.integers(0, NUM_CLASSES, (height, width), dtype=np.uint8)
        label[:4] = IGNORE_INDEX
        Image.fromarray(image).save(folder / f"{stem}.png")
        Image.fromarray(label).save(folder / f"{stem}_label.png")
        rows.append(
            {
                "dataset": dataset,
                "split": split,
                "image": f"{dataset}/{split}/{stem}.png",
                "label": f"{dataset}/{split}/{stem}_label.png",
                "height": height,
                "width": width,
                "class_pixels": np.bincount(label.ravel(), minlength=256)[:NUM_CLASSES].tolist(),
                "label_sha256": sha256_file(folder / f"{stem}_label.png"),
            }
        )
    return write_manifest(root / f"{dataset}_{split}.parquet", rows)


def invoke(*args: str | Path):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 1, an ``error:`` line naming ``fragments``, and no traceback."""
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr and "Traceback" not in result.output
    message = " ".join(result.stderr.split())  # rich wraps long lines at the test console's width
    for fragment in fragments:
        assert fragment in message, message
