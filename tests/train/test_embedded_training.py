from __future__ import annotations

from pathlib import Path

import pytest

from recyclelora.adapters import AdapterConfig
from recyclelora.data.synth import SynthConfig, generate_benchmark
from recyclelora.data.transform_config import TrainTransformConfig
from recyclelora.models import BackboneConfig, HeadConfig, ModelConfig
from recyclelora.train.config import DataConfig, TrainConfig
from recyclelora.train.loop import train


@pytest.mark.slow
@pytest.mark.network
def test_loss_goes_down_with_the_embedded_pretrained_vit(tmp_path: Path) -> None:
    synth = SynthConfig(width=224, height=112, source_train=48, source_val=1, target_val=1, targets=("synth_tex",))
    manifest = generate_benchmark(tmp_path / "synth", seed=0, config=synth).manifests["synth_src"]["train"]
    model = ModelConfig(
        backbone=BackboneConfig(weights="embedded", img_size=112),
        head=HeadConfig(kind="light", channels=64),
        adapter=AdapterConfig(rank_main=8, rank_sub=2),
    )
    data = DataConfig(train=(str(manifest),), transform=TrainTransformConfig(crop_size=(112, 112), base_size=112))
    config = TrainConfig(iterations=36, batch_size=4, lr=1e-3, log_every=1, checkpoint_every=0, num_workers=0)
    history = train(model, config, data, tmp_path / "run", progress=False).history
    first = sum(row["loss"] for row in history[:6]) / 6
    last = sum(row["loss"] for row in history[-6:]) / 6
    print(f"mean loss of the first 6 steps {first:.3f}, last 6 {last:.3f}")
    assert last < 0.8 * first, (first, last)
