"""Each paper preset runs end to end on the CPU: ``dvc repro evaluate`` in a throwaway copy of the repository.

The run is :mod:`benchmarks.smoke_presets` at reduced depth: tiny raw datasets in their distributed layouts, the
preset applied as it ships, then only a random ViT-L of :data:`DEPTH` blocks (width 1024, patch 16, 512 px),
2 iterations on the CPU and the GTAV subset clipped to the tiny GTAV. Everything else (Mask2Former, ranks,
crops, batch, evaluation protocol) is the preset's, and the trained model is checked to be built from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient
from safetensors import safe_open

from benchmarks.smoke_presets import SMOKE_SUBSET, STAGES, preset_settings, run_smoke
from recyclelora.models.backbone import default_out_indices
from recyclelora.models.checkpoint import read_checkpoint_info
from tests.pipeline.raw_layouts import FRAMES

PROJECT = Path(__file__).resolve().parents[2]
#: ViT-L blocks of the run: the fewest that feed the 4 pyramid levels from distinct blocks.
DEPTH = 4
#: Mask2Former settings of the published config that the presets leave to params.yaml's defaults.
PUBLISHED_HEAD = {"num_heads": 8, "dim_feedforward": 2048, "pixel_decoder_feedforward_dim": 1024}


def _same(actual: Any, expected: Any) -> bool:
    """Equality that does not tell tuples (dataclass fields) from lists (YAML)."""
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return list(actual) == list(expected)
    return actual == expected


def _expected_samples(settings: dict[str, Any]) -> dict[str, int]:
    """Samples trained on per manifest stem: the clipped subset, else every frame of the tiny dataset."""
    subset = settings["data"]["subset"]
    counts = {}
    for manifest in settings["data"]["train"]:
        stem = Path(manifest).stem
        dataset, split = stem.rsplit("_", 1)
        counts[stem] = min(subset[stem], SMOKE_SUBSET) if stem in subset else FRAMES[dataset][split]
    return counts


#: The preset CI runs: two training datasets with a per-manifest subset, padding after normalisation. Each
#: run takes minutes on 2 cores; the other presets run with ``python -m benchmarks.smoke_presets NAME --depth 4``.
CI_PRESETS = ("paper-gs2cbm",)


@pytest.mark.slow
@pytest.mark.parametrize("preset", CI_PRESETS)
def test_paper_preset_runs_end_to_end(preset: str, tmp_path: Path) -> None:
    settings = preset_settings(PROJECT, preset)
    result = run_smoke(preset, depth=DEPTH, workdir=tmp_path, timeout=3600)
    repo = result.repo
    print(result.line())

    # every stage up to evaluate ran, each in its MLflow child run
    assert result.stages_run == list(STAGES), result.output[-3000:]
    assert set(result.stage_seconds) == set(STAGES)

    # one mIoU per target domain of the preset, each on its one tiny image
    scores = json.loads((repo / "metrics" / "eval.json").read_text())
    targets = [Path(target).stem for target in settings["eval"]["targets"]]
    assert sorted(key for key in scores if key != "mean_mIoU") == sorted(targets)
    for target in targets:
        assert scores[target]["num_images"] == 1
        assert 0.0 <= scores[target]["mIoU"] <= 1.0
    assert scores["mean_mIoU"] == pytest.approx(sum(scores[t]["mIoU"] for t in targets) / len(targets))

    # the params are the preset's but for the smoke overrides
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["train"]["precision"] == settings["train"]["precision"] == "fp32"
    assert params["eval"]["resize"] == settings["eval"]["resize"] == {"mapillary_val": {"fit": [2048, 1024]}}
    for key in ("crop", "stride", "whole", "targets"):
        assert params["eval"][key] == settings["eval"][key], key
    assert params["data"]["transform"] | settings["data"]["transform"] == params["data"]["transform"]
    assert {k: params["train"][k] for k in ("batch_size", "lr")} == {"batch_size": 4, "lr": 1.0e-4}

    # the trained (and merged) model is the preset's: DINOv2-L/16 at 512 px, interpolated pyramid, Mask2Former
    train_info = read_checkpoint_info(repo / "models" / "train" / "model.safetensors")
    merged_info = read_checkpoint_info(repo / "models" / "merged.safetensors")
    assert merged_info.merged and not train_info.merged
    for info in (train_info, merged_info):
        config = info.config
        assert config.tuning == settings["model"]["tuning"] == "adapters"
        for key, value in settings["model"]["backbone"].items():
            if key not in ("weights", "out_indices"):
                assert _same(getattr(config.backbone, key), value), f"model.backbone.{key}"
        assert config.backbone.out_indices == default_out_indices(DEPTH)
        assert config.backbone.model_kwargs == {"depth": DEPTH}
        for key, value in (settings["model"]["head"] | PUBLISHED_HEAD).items():
            assert _same(getattr(config.head, key), value), f"model.head.{key}"
        for key, value in settings["model"]["adapter"].items():
            assert _same(getattr(config.adapter, key), value), f"model.adapter.{key}"
    assert (train_info.config.head.kind, train_info.config.backbone.pyramid) == ("mask2former", "interpolate")
    assert train_info.config.backbone.embed_resample == "bicubic"
    with safe_open(str(repo / "models" / "merged.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        shapes = {
            k: tuple(handle.get_slice(f"backbone.vit.{k}").get_shape())
            for k in ("patch_embed.proj.weight", "pos_embed")
        }
    assert shapes == {"patch_embed.proj.weight": (1024, 3, 16, 16), "pos_embed": (1, 1 + 32 * 32, 1024)}
    assert f"backbone.vit.blocks.{DEPTH - 1}.attn.qkv.weight" in keys
    assert f"backbone.vit.blocks.{DEPTH}.attn.qkv.weight" not in keys
    backbone = json.loads((repo / "models" / "backbone" / "backbone.json").read_text())
    assert (backbone["source"], backbone["model"]) == ("none", settings["model"]["backbone"]["name"])
    assert (backbone["img_size"], backbone["patch_size"]) == (512, 16)

    # fp32 training, as recorded by the train stage's MLflow run
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("recyclelora").experiment_id])
    (train_run,) = [run for run in runs if run.info.run_name == "train"]
    assert train_run.data.params["train.precision"] == "fp32"
    assert train_run.data.params["train.device"] == "cpu"

    # the samples trained on: the clipped GTAV subset (distinct frames) plus every frame of the other sources
    samples = pq.read_table(repo / "models" / "train" / "train_samples.parquet").to_pylist()
    counts: dict[str, int] = {}
    for sample in samples:
        stem = Path(sample["manifest"]).stem
        counts[stem] = counts.get(stem, 0) + 1
    assert counts == _expected_samples(settings)
    assert len({(s["manifest"], s["row"]) for s in samples}) == len(samples)
    if "gta5_train" in counts:
        rows = [s["row"] for s in samples if Path(s["manifest"]).stem == "gta5_train"]
        assert all(0 <= row < FRAMES["gta5"]["train"] for row in rows)
    summary = json.loads((repo / "models" / "train" / "train_summary.json").read_text())
    assert summary["train_samples"] == len(samples) and summary["iterations"] == 2
    assert summary["trainable_parameters/backbone"] == 0 and summary["trainable_parameters/adapters"] > 0

    shutil.rmtree(repo)  # about 1.5 GB of models and DVC cache; a failed run keeps its workspace
