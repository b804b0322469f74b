from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from recyclelora.models import load_segmentor
from recyclelora.models.heads.light import LightHead
from recyclelora.train.config import DataConfig
from recyclelora.train.loop import NonFiniteLossError, train
from tests.helpers import tiny_model_config, tiny_train_config


class _Interrupt(Exception):
    pass


def _stop_at(step: int):
    def on_log(row: dict) -> None:
        if row["step"] == step:
            raise _Interrupt

    return on_log


def test_resumed_run_reproduces_the_uninterrupted_losses(tmp_path: Path, tiny_data: DataConfig) -> None:
    model_config, config = tiny_model_config(), tiny_train_config(iterations=6, checkpoint_every=3)
    full = train(model_config, config, tiny_data, tmp_path / "full", progress=False)
    with pytest.raises(_Interrupt):
        train(model_config, config, tiny_data, tmp_path / "cut", progress=False, on_log=_stop_at(5))
    resumed = train(model_config, config, tiny_data, tmp_path / "cut", resume=True, progress=False)
    assert [row["step"] for row in resumed.history] == list(range(1, 7))
    for a, b in zip(full.history, resumed.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-6)
    first = load_segmentor(tmp_path / "full" / "model.safetensors")[0].eval()
    second = load_segmentor(tmp_path / "cut" / "model.safetensors")[0].eval()
    x = torch.randn(1, 3, 42, 42)
    torch.testing.assert_close(first(x), second(x), rtol=1e-5, atol=1e-6)


def test_run_outputs_and_reload(tmp_path: Path, tiny_data: DataConfig) -> None:
    config = tiny_train_config(iterations=4, checkpoint_every=2, val_every=2)
    result = train(tiny_model_config(), config, tiny_data, tmp_path, progress=False)
    assert (tmp_path / "train_log.csv").read_text().splitlines()[0].startswith("step,")
    assert (tmp_path / "train_summary.json").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_0000004"
    assert "val_mIoU" in result.history[1] and 0.0 <= result.history[1]["val_mIoU"] <= 1.0
    # the row of step k logs the learning rate its update used: poly(k - 1)
    assert result.history[0]["lr"] == pytest.approx(1e-3, rel=1e-6)
    assert result.history[1]["lr"] == pytest.approx(1e-3 * (1 - 1 / 4) ** 0.9, rel=1e-6)
    model, info, factors = load_segmentor(result.model_path)
    assert info.metadata["step"] == "4" and factors is not None


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_data: DataConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = LightHead.loss

    def poisoned(self, output, labels):
        calls["n"] += 1
        losses = original(self, output, labels)
        return {k: v * float("nan") for k, v in losses.items()} if calls["n"] > 4 else losses

    monkeypatch.setattr(LightHead, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 4"):
        train(tiny_model_config(), tiny_train_config(iterations=6, checkpoint_every=2), tiny_data, tmp_path,
              progress=False)  # fmt: skip
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_0000004"
    assert not (tmp_path / "model.safetensors").exists()
    load_segmentor(tmp_path / "checkpoints" / "step_0000004" / "model.safetensors")


def test_resume_with_another_model_config_is_refused(tmp_path: Path, tiny_data: DataConfig) -> None:
    train(tiny_model_config(), tiny_train_config(iterations=2, checkpoint_every=1), tiny_data, tmp_path,
          progress=False)  # fmt: skip
    other = tiny_model_config(adapter=dataclasses.replace(tiny_model_config().adapter, rank_main=3))
    with pytest.raises(ValueError, match="another model config"):
        train(other, tiny_train_config(iterations=4), tiny_data, tmp_path, resume=True, progress=False)
