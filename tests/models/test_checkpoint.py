"""A checkpoint loads as one object: ``Segmentor.from_checkpoint`` carries what the file says about itself."""

from __future__ import annotations

from pathlib import Path

import torch

from recyclelora.models import Segmentor, build_segmentor, merge_checkpoint, save_segmentor
from tests.cli import perturb_adapters, single_thread, tiny_config


def test_from_checkpoint_carries_the_saved_config_and_initial_factors(tmp_path: Path) -> None:
    with single_thread():
        torch.manual_seed(0)
        config = tiny_config()
        built = build_segmentor(config)
        assert built.model.checkpoint_info is None and built.model.init_factors is None  # built in memory
        perturb_adapters(built.model, seed=0)
        path = save_segmentor(
            tmp_path / "model.safetensors",
            built.model,
            config,
            backbone_sha256=built.backbone_sha256,
            init_factors=built.init_factors,
        )
        model = Segmentor.from_checkpoint(path)
        assert isinstance(model, Segmentor)
        assert model.checkpoint_info is not None and model.checkpoint_info.config == config
        assert not model.checkpoint_info.merged
        assert model.init_factors is not None and model.init_factors.keys() == built.init_factors.keys()
        for layer, saved in built.init_factors.items():
            loaded = model.init_factors[layer]
            for field in ("a_main", "b_main", "a_sub", "b_sub"):
                assert torch.equal(getattr(loaded, field), getattr(saved, field)), (layer, field)

        merged = Segmentor.from_checkpoint(merge_checkpoint(path, tmp_path / "merged.safetensors").path)
        assert isinstance(merged, Segmentor)
        assert merged.checkpoint_info is not None and merged.checkpoint_info.merged is True
        assert merged.checkpoint_info.config == config
        assert merged.init_factors is None
