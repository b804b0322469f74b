from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from recyclelora.io import PARTIAL_SUFFIX
from recyclelora.models import Segmentor
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


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_losses(tmp_path: Path, tiny_data: DataConfig) -> None:
    model_config, config = tiny_model_config(), tiny_train_config(iterations=6, checkpoint_every=3)
    full = train(model_config, config, tiny_data, tmp_path / "full", progress=False)
    with pytest.raises(_Interrupt):
        train(model_config, config, tiny_data, tmp_path / "cut", progress=False, on_log=_stop_at(5))
    resumed = train(model_config, config, tiny_data, tmp_path / "cut", resume=True, progress=False)
    assert [row["step"] for row in resumed.history] == list(range(1, 7))
    for a, b in zip(full.history, resumed.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-6)
    first = Segmentor.from_checkpoint(tmp_path / "full" / "model.safetensors").eval()
    second = Segmentor.from_checkpoint(tmp_path / "cut" / "model.safetensors").eval()
    x = torch.randn(1, 3, 42, 42)
    torch.testing.assert_close(first(x), second(x), rtol=1e-5, atol=1e-6)


def test_run_outputs_and_reload(tmp_path: Path, tiny_data: DataConfig) -> None:
    config = tiny_train_config(iterations=4, checkpoint_every=2, val_every=2)
    result = train(tiny_model_config(), config, tiny_data, tmp_path, progress=False)
    assert (tmp_path / "train_log.csv").read_text().splitlines()[0].startswith("step,")
    assert (tmp_path / "train_summary.json").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_0000004"
    assert "val_mIoU" in result.history[1] and 0.0 <= result.history[1]["val_mIoU"] <= 1.0
    # the row of step k logs the learning rate its update used: poly(k - 1) over T - 1 = 3 decays
    assert result.history[0]["lr"] == pytest.approx(1e-3, rel=1e-6)
    assert result.history[1]["lr"] == pytest.approx(1e-3 * (1 - 1 / 3) ** 0.9, rel=1e-6)
    assert result.history[3]["lr"] == 0.0
    model = Segmentor.from_checkpoint(result.model_path)
    assert model.checkpoint_info.metadata["step"] == "4" and model.init_factors is not None


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
    Segmentor.from_checkpoint(tmp_path / "checkpoints" / "step_0000004" / "model.safetensors")


def test_resume_with_other_settings_is_refused_naming_each_change(tmp_path: Path, tiny_data: DataConfig) -> None:
    config = tiny_train_config(iterations=4, checkpoint_every=2)
    with pytest.raises(_Interrupt):
        train(tiny_model_config(), config, tiny_data, tmp_path, progress=False, on_log=_stop_at(3))
    other = tiny_model_config(adapter=dataclasses.replace(tiny_model_config().adapter, rank_main=3))
    with pytest.raises(ValueError, match=r"model.adapter.rank_main: 4 -> 3"):
        train(other, config, tiny_data, tmp_path, resume=True, progress=False)
    changed = dataclasses.replace(config, lr=5e-4, iterations=8)
    flipped = dataclasses.replace(tiny_data, transform=dataclasses.replace(tiny_data.transform, flip_prob=0.0))
    with pytest.raises(ValueError) as refused:
        train(tiny_model_config(), changed, flipped, tmp_path, resume=True, progress=False)
    message = str(refused.value)
    for change in ("train.lr: 0.001 -> 0.0005", "train.iterations: 4 -> 8", "data.transform.flip_prob: 0.5 -> 0.0"):
        assert change in message
    # settings of the loop alone (logging, checkpoints, workers) may change
    loop_only = dataclasses.replace(config, log_every=2, checkpoint_every=0, num_workers=1)
    resumed = train(tiny_model_config(), loop_only, tiny_data, tmp_path, resume=True, progress=False)
    assert resumed.history[-1]["step"] == 4


def test_a_folder_holding_a_run_is_not_trained_into_afresh(tmp_path: Path, tiny_data: DataConfig) -> None:
    config = tiny_train_config(iterations=2, checkpoint_every=1)
    train(tiny_model_config(), config, tiny_data, tmp_path, progress=False)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a training run: continue it with --resume"):
        train(tiny_model_config(), config, tiny_data, tmp_path, progress=False)
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_checkpoints_are_pruned_by_step_number_not_by_name(tmp_path: Path) -> None:
    from recyclelora.train.loop import _checkpoint_dirs

    for step in (9_999_999, 10_000_000, 200):
        (tmp_path / f"step_{step:07d}").mkdir()
    (tmp_path / f"step_0000300{PARTIAL_SUFFIX}").mkdir()  # a checkpoint a killed process was writing
    assert [p.name for p in _checkpoint_dirs(tmp_path)] == ["step_0000200", "step_9999999", "step_10000000"]


def test_resume_without_a_checkpoint_logs_that_it_starts_from_step_0(
    tmp_path: Path, tiny_data: DataConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="recyclelora"):
        result = train(tiny_model_config(), tiny_train_config(iterations=1), tiny_data, tmp_path, resume=True,
                       progress=False)  # fmt: skip
    records = [r for r in caplog.records if r.name == "recyclelora.train.loop"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.INFO, f"no checkpoint under {tmp_path / 'checkpoints'}: starting from step 0")
    ]
    assert [row["step"] for row in result.history] == [1]
