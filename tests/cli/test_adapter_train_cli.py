from __future__ import annotations

from pathlib import Path

import timm
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from recyclelora.cli.main import app
from recyclelora.models import Segmentor

runner = CliRunner()


def _vit_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return path


def test_init_caches_once_and_info_describes_the_cache(tmp_path: Path) -> None:
    source, cache = _vit_file(tmp_path), tmp_path / "cache"
    args = ["init", str(source), "--model", "vit_small_patch14_dinov2", "--img-size", "56", "--rank-main", "8",
            "--rank-sub", "2", "--cache-dir", str(cache)]  # fmt: skip
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "computed" in first.output
    (cache_file,) = cache.iterdir()
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "reused" in second.output
    shown = runner.invoke(app, ["info", str(cache_file)])
    assert shown.exit_code == 0
    assert "rrqr" in shown.output and "rank_main" in shown.output and "│ layers" in shown.output


def test_init_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(_vit_file(tmp_path))])
    assert result.exit_code == 1 and "--model" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["init", "embedded", "--init", "lora"])
    assert result.exit_code == 1 and "nothing to cache" in result.output
    result = runner.invoke(app, ["info", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_train_command_from_params(tmp_path: Path, tiny_benchmark: dict) -> None:
    params = {
        "base": {"seed": 1},
        "data": {"train": [str(tiny_benchmark["synth_src"]["train"])],
                 "transform": {"crop_size": [42, 42], "base_size": 48}},
        "model": {"backbone": {"weights": "none", "img_size": 56,
                               "model_kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 2}},
                  "head": {"kind": "light", "channels": 32}, "adapter": {"rank_main": 4, "rank_sub": 2}},
        "train": {"iterations": 2, "batch_size": 2, "num_workers": 0, "checkpoint_every": 0},
    }  # fmt: skip
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--params", str(path), "--out", str(out), "--no-progress",
                                 "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert result.exit_code == 0, result.output
    model = Segmentor.from_checkpoint(out / "model.safetensors")
    info = model.checkpoint_info
    assert info.metadata["step"] == "2" and info.config.adapter.rank_main == 4
    info_out = runner.invoke(app, ["info", str(out / "model.safetensors")])
    assert "segmentor checkpoint" in info_out.output and "rank main 4 / sub 2" in info_out.output
    counts = model.trainable_parameters()
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert counts["adapters"] == adapters > 0 and counts["neck"] == counts["backbone"] == 0
    assert counts["total"] == adapters + sum(p.numel() for p in model.head.parameters())
    assert f"{counts['total']:,} (adapters {adapters:,}, backbone 0, neck 0, head" in info_out.output
    params["train"]["lr"] = -1
    path.write_text(yaml.safe_dump(params))
    bad = runner.invoke(app, ["train", "--params", str(path), "--out", str(out)])
    assert bad.exit_code == 1 and "train.lr must be a number > 0, got -1" in bad.output
