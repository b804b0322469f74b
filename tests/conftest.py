"""Shared fixtures: tiny random ViTs and a tiny embedded benchmark (no hub access)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from recyclelora.data.synth import SynthConfig, generate_benchmark
from recyclelora.data.transform_config import TrainTransformConfig
from recyclelora.train.config import DataConfig
from tests.helpers import tiny_vit

# The command lines' rich consoles (made on first import, after this) render 200 columns wide, in this process
# and the ones it starts: a table cell holding a temporary path (longer under pytest-xdist's per-worker folders)
# is then not folded across the lines an assertion reads.
os.environ["COLUMNS"] = "200"


@pytest.fixture
def vit() -> torch.nn.Module:
    return tiny_vit()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Manifests by domain and split of a 96 x 48 benchmark: 16 source train images, 4 per target."""
    config = SynthConfig(width=96, height=48, source_train=16, source_val=4, target_val=4, targets=("synth_night",))
    return generate_benchmark(tmp_path_factory.mktemp("synth"), seed=0, config=config, workers=1).manifests


@pytest.fixture
def tiny_data(tiny_benchmark: dict[str, dict[str, Path]]) -> DataConfig:
    return DataConfig(
        train=(str(tiny_benchmark["synth_src"]["train"]),),
        val=(str(tiny_benchmark["synth_night"]["val"]),),
        transform=TrainTransformConfig(crop_size=(42, 42), base_size=48),
    )
