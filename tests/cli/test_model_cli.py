from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import onnx
import pyarrow.parquet as pq
import pytest
import timm
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from typer.testing import CliRunner

import recyclelora.models.merge as merge_module
from recyclelora.adapters import adapter_layers, merge_adapters
from recyclelora.analysis import rank_report
from recyclelora.cli.main import app
from recyclelora.eval.analyze import rank_rows
from recyclelora.eval.predictors import OnnxPredictor
from recyclelora.io import sha256_file
from recyclelora.models import Segmentor, read_checkpoint_info
from recyclelora.models.merge import MERGE_RTOL
from tests.cli import (
    RANK_MAIN,
    RANK_SUB,
    SIZE,
    TINY_VIT,
    assert_user_error,
    invoke,
    save_tiny_checkpoint,
    single_thread,
)

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield




@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", seed=3)


@pytest.fixture(scope="module")
def merged(checkpoint) -> tuple[Path, str]:
    out = checkpoint.parent / "merged.safetensors"
    result = invoke("merge", "--checkpoint", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def images(batch: int = 2, seed: int = 7) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_merge_keeps_logits_and_records_the_source(checkpoint, merged) -> None:
    out, stdout = merged
    source_sha = sha256_file(checkpoint)
    assert source_sha in stdout
    info = read_checkpoint_info(out)
    assert info.merged and info.metadata["source_sha256"] == source_sha
    assert info.metadata["trainable_parameters"] == read_checkpoint_info(checkpoint).metadata["trainable_parameters"]
    assert not any("lora_" in key or key.startswith("init.") for key in load_file(out))
    original = Segmentor.from_checkpoint(checkpoint)
    folded = Segmentor.from_checkpoint(out)
    with torch.inference_mode():
        expected, actual = original.eval()(images()), folded.eval()(images())
    assert float((actual - expected).abs().max() / expected.abs().max()) <= MERGE_RTOL


def test_merged_backbone_loads_into_plain_timm(checkpoint, merged) -> None:
    prefix = "backbone.vit."
    state = {k[len(prefix) :]: v for k, v in load_file(merged[0]).items() if k.startswith(prefix)}
    vit = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=SIZE, num_classes=0, **TINY_VIT
    ).eval()
    vit.load_state_dict(state, strict=True)
    original = Segmentor.from_checkpoint(checkpoint)  # the adapted backbone before merging
    with torch.inference_mode():
        expected = original.backbone.vit.eval().forward_features(images())
        torch.testing.assert_close(vit.forward_features(images()), expected, rtol=1e-4, atol=1e-4)


def test_merge_refuses_a_merged_checkpoint(merged, tmp_path) -> None:
    result = invoke("merge", "--checkpoint", merged[0], "--out", tmp_path / "twice.safetensors")
    assert_user_error(result, "already merged")
    assert not (tmp_path / "twice.safetensors").exists()


def test_merge_fails_loudly_when_the_logits_change(checkpoint, tmp_path, monkeypatch) -> None:
    def wrong_merge(vit: torch.nn.Module) -> None:  # a fold that gets one weight wrong
        merge_adapters(vit)
        with torch.no_grad():
            vit.blocks[0].attn.qkv.weight.mul_(1.5)

    monkeypatch.setattr(merge_module, "merge_adapters", wrong_merge)
    out = tmp_path / "merged.safetensors"
    result = invoke("merge", "--checkpoint", checkpoint, "--out", out)
    assert_user_error(result, "differ from the unmerged model's", "nothing was written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_onnx_with_dynamic_batch_matches_torch(checkpoint, tmp_path) -> None:
    out = tmp_path / "model.onnx"
    result = invoke(
        "export", "onnx", "--checkpoint", checkpoint, "--out", out, "--height", SIZE, "--width", SIZE
    )
    assert result.exit_code == 0, result.output
    assert "merged 16 adapter layers" in result.stdout and "argmax agreement" in result.stdout
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    original = Segmentor.from_checkpoint(checkpoint)
    with torch.inference_mode():
        expected = original.eval()(images(batch=4))
    actual = OnnxPredictor(out)(images(batch=4))
    assert float((actual - expected).abs().max() / expected.abs().max()) <= 1e-3


@pytest.mark.slow
def test_export_onnx_writes_an_int8_copy_when_asked(checkpoint, tmp_path) -> None:
    out = tmp_path / "model.onnx"
    common = ("export", "onnx", "--checkpoint", checkpoint, "--out", out, "--height", SIZE, "--width", SIZE)
    assert_user_error(invoke(*common, "--int8", "static"), "--calibration")
    assert_user_error(invoke(*common, "--int8", "int4"), "static, dynamic")
    result = invoke(*common, "--int8", "dynamic")
    assert result.exit_code == 0, result.output
    int8 = tmp_path / "model.int8.onnx"
    assert "int8 (dynamic)" in result.stdout and int8.stat().st_size < out.stat().st_size
    assert OnnxPredictor(int8)(images(batch=2)).shape == (2, 19, SIZE, SIZE)


def test_export_missing_checkpoint(tmp_path) -> None:
    result = invoke(
        "export", "onnx", "--checkpoint", tmp_path / "nope.safetensors", "--out", tmp_path / "m.onnx"
    )
    assert_user_error(result, "does not exist")


def test_analyze_at_initialisation_gives_the_known_values(tmp_path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "init.safetensors", trained=False)
    result = invoke("analyze", "--checkpoint", checkpoint, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "rank_summary.json").read_text())
    # B has orthonormal columns and A selects columns: r singular values equal to 1, so erank = r; main and
    # sub bases are disjoint columns of one Q, so every principal angle is pi/2.
    assert summary["layers"] == 16
    assert summary["erank_main"] == pytest.approx(RANK_MAIN) and summary["erank_sub"] == pytest.approx(
        RANK_SUB
    )
    assert summary["efficiency_main"] == pytest.approx(1.0) and summary["efficiency_sub"] == pytest.approx(
        1.0
    )
    assert summary["similarity"] == pytest.approx(0.0, abs=1e-9)
    assert summary["grassmann_distance"] == pytest.approx(math.pi / 2 * math.sqrt(min(RANK_MAIN, RANK_SUB)))
    table = pq.read_table(tmp_path / "report" / "rank_report.parquet").to_pylist()
    assert sorted({row["block"] for row in table}) == [0, 1, 2, 3]
    assert {row["module"] for row in table} == {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    assert (tmp_path / "report" / "rank_report.csv").read_text().startswith('"layer","block"')
    assert (tmp_path / "report" / "rank_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_after_training_reports_the_changed_adapters(checkpoint, tmp_path) -> None:
    result = invoke("analyze", "--checkpoint", checkpoint, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "mean" in result.stdout
    rows = pq.read_table(tmp_path / "rank_report.parquet").to_pylist()
    model = Segmentor.from_checkpoint(checkpoint)
    assert rows == rank_rows(rank_report(model))
    assert all(row["similarity"] > 1e-3 and abs(row["erank_main"] - RANK_MAIN) > 1e-3 for row in rows)


def test_analyze_refuses_merged_and_adapterless_checkpoints(merged, tmp_path) -> None:
    assert_user_error(invoke("analyze", "--checkpoint", merged[0]), "is merged", "analyse the checkpoint")
    full = save_tiny_checkpoint(tmp_path / "full.safetensors", tuning="full")
    assert_user_error(invoke("analyze", "--checkpoint", full), "tuning='full'", "no adapters")


def test_export_lora_loads_into_peft_on_the_pretrained_vit(tmp_path: Path) -> None:
    checkpoint = save_tiny_checkpoint(tmp_path / "model.safetensors")
    result = runner.invoke(app, ["export", "lora", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "lora")])
    assert result.exit_code == 0, result.output
    adapted = Segmentor.from_checkpoint(checkpoint)
    factors = adapted.init_factors
    vit = adapted.backbone.vit.eval()
    # the pretrained weights the residuals were made from: W0 = W_res + s B0 A0
    plain = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=SIZE, **TINY_VIT).eval()
    state = merge_adapters(copy.deepcopy(vit)).state_dict()
    for name, layer in adapter_layers(vit):
        state[f"{name}.weight"] = layer.weight.detach() + layer.scaling * factors[name].product()
    plain.load_state_dict(state, strict=True)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    peft_model = get_peft_model(plain, LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"],
                                                  target_modules=config["target_modules"], lora_dropout=0.0))  # fmt: skip
    outcome = set_peft_model_state_dict(peft_model, load_file(tmp_path / "lora" / "adapter_model.safetensors"))
    assert not outcome.unexpected_keys
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(peft_model.forward_features(x), vit.forward_features(x), rtol=1e-4, atol=1e-4)
