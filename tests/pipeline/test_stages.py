"""Pipeline stages in-process: params validation before any work, MLflow child runs, outputs, resume, presets,
the comparison table's commands and aggregation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

import pipeline.stages.train as train_stage
from pipeline import compare, stages
from pipeline.cli import app
from pipeline.params import BaseConfig, DatasetsConfig, ExportConfig, TrackConfig, load_pipeline_params
from pipeline.params_text import render_params
from pipeline.presets import FREE_FORM, apply_preset, available_presets, read_preset
from pipeline.stages._common import BACKBONE_FILE, with_backbone
from pipeline.stages.data import check_manifests
from pipeline.stages.evaluate import evaluate_targets
from pipeline.stages.init import compute_init_cache
from pipeline.stages.weights import convert_backbone
from recyclelora.adapters import AdapterConfig, CacheEntry, find_target_linears
from recyclelora.config import EvalConfig, ParamsError, read_yaml
from recyclelora.data.manifest import read_manifest
from recyclelora.data.synth import SynthConfig
from recyclelora.data.transform_config import EvalTransformConfig, ResizeConfig, TrainTransformConfig
from recyclelora.digest import state_dict_sha256
from recyclelora.io import PARTIAL_SUFFIX
from recyclelora.models.backbone import BackboneConfig, ViTBackbone
from recyclelora.models.build import build_segmentor
from recyclelora.models.checkpoint import save_segmentor
from recyclelora.models.heads import HeadConfig
from recyclelora.train.config import TrainConfig
from tests.helpers import tiny_model_config
from tests.pipeline.workspace import PROJECT, make_workspace
from tests.train.test_stop_signals import start_when_checkpointed, stopped_step

TINY = Path(__file__).with_name("tiny_params.yaml")
CHECKSUMS = Path("checksums/gta5.sha256")  # the data stage's GTAV checksum file, as dvc.yaml names it
STAGE_ORDER = ["data", "weights", "init", "train", "merge", "evaluate", "export", "analyze"]
runner = CliRunner()


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC workspace: the project's dvc.yaml, params.yaml shrunk by tiny_params.yaml, an MLflow store."""
    make_workspace(tmp_path, monkeypatch)
    apply_preset(tmp_path / "params.yaml", str(TINY))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edit_params(path: Path, dotted: str, value: object) -> None:
    """Set one (possibly new) dotted key of a params file."""
    params = yaml.safe_load(path.read_text())
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run_pipeline(root: Path) -> None:
    """Every stage in order, in this process, with the paths of dvc.yaml."""
    params = root / "params.yaml"
    backbone, init, trained = Path("models/backbone"), Path("models/init"), Path("models/train")
    merged, metrics = Path("models/merged.safetensors"), Path("metrics")
    stages.run_data(params, Path("data/prepared"), CHECKSUMS)
    stages.run_weights(params, backbone)
    stages.run_init(params, backbone, init, progress=False)
    stages.run_train(params, backbone, init, trained, metrics / "train.json", progress=False)
    stages.run_merge(params, trained / "model.safetensors", merged)
    stages.run_evaluate(params, merged, Path("reports/eval"), metrics / "eval.json", progress=False)
    stages.run_export(params, merged, Path("models/onnx"), metrics / "export.json")
    stages.run_analyze(
        params, trained / "model.safetensors", Path("reports/analysis"), metrics / "analysis.json"
    )


# params.yaml


def test_project_params_validate_and_list_every_setting() -> None:
    params = load_pipeline_params(PROJECT / "params.yaml")
    assert params.run.model.backbone.weights == "embedded" and params.run.model.head.kind == "light"
    assert params.run.model.adapter.init == "rrqr" and params.run.data.transform.crop_size[0] % 14 == 0
    raw = params.raw
    sections = {
        "base": BaseConfig, "datasets": DatasetsConfig, "datasets.synth": SynthConfig, "data": None,
        "data.transform": TrainTransformConfig, "data.val_transform": EvalTransformConfig,
        "model.backbone": BackboneConfig, "model.head": HeadConfig, "model.adapter": AdapterConfig,
        "train": TrainConfig, "eval": EvalConfig, "export": ExportConfig, "track": TrackConfig,
    }  # fmt: skip
    for section, cls in sections.items():
        if cls is None:
            continue
        keys = set(params.sections(section)[section])
        expected = {f.name for f in dataclasses.fields(cls)} - ({"seed"} if section == "train" else set())
        assert keys == expected, f"params.yaml {section}: missing {expected - keys}, extra {keys - expected}"
    assert set(raw["data"]) == {"train", "val", "subset", "transform", "val_transform"}
    assert "seed" not in raw["train"]  # train.seed comes from base.seed


def test_every_key_of_params_yaml_is_documented() -> None:
    lines = (PROJECT / "params.yaml").read_text().splitlines()
    previous = ""
    for number, line in enumerate(lines, start=1):
        if re.match(r"^\s*[a-z_]+:", line):
            assert "#" in line or previous.lstrip().startswith("#"), (
                f"params.yaml:{number} has no comment: {line}"
            )
        if line.strip():
            previous = line


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        ("model.adapter.init", "svd", ["params.model.adapter", "init must be one of ['rrqr'", "got 'svd'"]),
        ("model.tuning", "half", ["params.model.tuning is 'half'", "must be one of", "frozen"]),
        ("train.lrr", 0.1, ["params.train.lrr", "allowed keys"]),
        ("trian.lr", 0.1, ["unknown section", "allowed sections"]),
        ("datasets.real", {"kitti": "raw/kitti"}, ["params.datasets", "kitti", "gta5"]),
        ("datasets.real", {"bdd100k": None}, ["cannot be downloaded", "gta5"]),
        ("export.height", 0, ["params.export", "height must be an integer >= 1"]),
        ("eval.targets", [], ["params.eval.targets is empty"]),
        (
            "eval.resize",
            {"mapillary_val": {"fit": [2048, 1024]}},
            ["eval.resize names ['mapillary_val']", "targets are ['synth_tex_val'"],
        ),
        (
            "eval.resize",
            {"synth_fog_val": {"fit": [2048]}},
            ["params.eval.resize.synth_fog_val.fit is [2048]", "a list of 2 (an integer, an integer) or null"],
        ),
        (
            "data.subset",
            12403,
            ["params.data.subset is 12403", "a mapping of a string to an integer", "seeded random subsets"],
        ),
        ("train.lr", "fast", ["params.train.lr is 'fast', but it must be a number"]),
        ("train.val_every", 2.5, ["params.train.val_every is 2.5, but it must be an integer"]),
        ("data.transform.photometric", "yes", ["params.data.transform.photometric is 'yes'", "true or false"]),
        (
            "data.subset",
            {"gta5_train": 12403},
            ["data.subset names ['gta5_train']", "stems are ['synth_src_train']"],
        ),
        (
            "data.subset",
            {"synth_src_train": 0},
            ["data.subset.synth_src_train must be an integer >= 1", "got 0"],
        ),
    ],
)
def test_invalid_params_stop_the_stage_before_any_work(
    workspace: Path, key: str, value: object, fragments: list[str]
) -> None:
    edit_params(workspace / "params.yaml", key, value)
    result = runner.invoke(app, ["data", "--out", "data/prepared", "--checksums", str(CHECKSUMS)])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert message.startswith("error:") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message
    assert not (workspace / "data").exists() and not (workspace / "mlflow.db").exists()


def test_scientific_notation_is_a_number_as_dvc_reads_it(workspace: Path) -> None:
    """``lr: 1e-3`` is a string to YAML 1.1 (PyYAML) but a number to YAML 1.2 (DVC's reader, and ours)."""
    path = workspace / "params.yaml"
    path.write_text(re.sub(r"(?m)^  lr: [^#]*#", "  lr: 1e-3                 #", path.read_text()))
    path.write_text(re.sub(r"(?m)^  weight_decay_end: [^#]*#", "  weight_decay_end: 1e-5  #", path.read_text()))
    run = load_pipeline_params(path).run
    assert (run.train.lr, run.train.weight_decay_end) == (1e-3, 1e-5)


def test_a_yaml_syntax_error_is_one_line_naming_the_place(workspace: Path) -> None:
    path = workspace / "params.yaml"
    path.write_text(path.read_text().replace("  seed: 0", "  seed: [0", 1))
    result = runner.invoke(app, ["data", "--out", "data/prepared", "--checksums", str(CHECKSUMS)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert message.startswith("error:") and "params.yaml, line" in message and "invalid YAML" in message


def test_data_stage_refuses_manifests_it_does_not_write(workspace: Path) -> None:
    edit_params(workspace / "params.yaml", "eval.targets", ["data/prepared/synth_night_val.parquet"])
    params = load_pipeline_params(workspace / "params.yaml")
    with pytest.raises(ValueError, match=r"params.eval.targets names data/prepared/synth_night_val.parquet"):
        check_manifests(params, Path("data/prepared"))
    with pytest.raises(ValueError, match="params.data.train"):
        check_manifests(load_pipeline_params(workspace / "params.yaml"), Path("data/elsewhere"))


# Stages


@pytest.mark.slow
def test_pipeline_stages_record_child_runs_outputs_and_metrics(workspace: Path) -> None:
    edit_params(workspace / "params.yaml", "export.int8", "static")
    edit_params(workspace / "params.yaml", "export.int8_windows", 4)
    run_pipeline(workspace)
    assert not list(workspace.rglob(f"*{PARTIAL_SUFFIX}"))
    client = MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("recyclelora").experiment_id],
                              order_by=["attributes.start_time ASC"])  # fmt: skip
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {
        run.info.run_name: run
        for run in runs
        if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert list(children) == STAGE_ORDER and parent.info.status == "FINISHED"
    assert all(run.info.status == "FINISHED" for run in children.values())

    # each child records the params its stage reads, and only those
    assert children["init"].data.params["model.adapter.rank_main"] == "2"
    assert not any(name.startswith("train.") for name in children["init"].data.params)
    train_run = children["train"]
    assert train_run.data.params["train.iterations"] == "4" and train_run.data.params["base.seed"] == "0"
    steps = [m.step for m in client.get_metric_history(train_run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "val_mIoU")] == [2, 4]
    assert "model.safetensors" in {a.path for a in client.list_artifacts(train_run.info.run_id)}

    # the DVC metric files and the MLflow metrics agree with the reports
    scores = json.loads((workspace / "metrics/eval.json").read_text())
    full = json.loads((workspace / "reports/eval/metrics.json").read_text())
    targets = ["synth_tex_val", "synth_fog_val"]
    assert [k for k in scores if k != "mean_mIoU"] == targets
    for target in targets:
        assert scores[target]["mIoU"] == full[target]["mIoU"] and "IoU" not in scores[target]
        assert children["evaluate"].data.metrics[f"mIoU/{target}"] == pytest.approx(scores[target]["mIoU"])
    assert scores["mean_mIoU"] == pytest.approx(statistics.fmean(scores[t]["mIoU"] for t in targets))
    evaluate_artifacts = {a.path for a in client.list_artifacts(children["evaluate"].info.run_id, "eval")}
    assert {"eval/metrics.json", "eval/class_iou.png", "eval/per_class.parquet"} <= evaluate_artifacts
    exported = {a.path for a in client.list_artifacts(children["export"].info.run_id)}
    assert {"model.onnx", "model.int8.onnx"} <= exported
    export = json.loads((workspace / "metrics/export.json").read_text())
    assert export["argmax_agreement"] >= 0.999 and export["max_rel_diff"] <= 1e-3
    assert 0 <= export["int8_argmax_agreement"] <= 1 and export["int8_size_mb"] < export["size_mb"]
    int8 = onnx.load(str(workspace / "models/onnx/model.int8.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in int8.graph.node)  # static: calibrated QDQ pairs
    train_metrics = json.loads((workspace / "metrics/train.json").read_text())
    assert train_metrics["iterations"] == 4 and "val_mIoU" in train_metrics
    analysis = json.loads((workspace / "metrics/analysis.json").read_text())
    assert analysis["layers"] == 16 and analysis["erank_main"] > 0  # 4 blocks x (qkv, proj, fc1, fc2)


def test_weights_stage_writes_a_reproducible_loadable_backbone(tmp_path: Path) -> None:
    config = BackboneConfig(
        weights="none", img_size=28, model_kwargs={"depth": 4, "embed_dim": 24, "num_heads": 2}
    )
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    record = convert_backbone(config, first)
    assert record["sha256"] == convert_backbone(config, second)["sha256"]
    reloaded = ViTBackbone(dataclasses.replace(config, weights=str(first / BACKBONE_FILE)))
    assert state_dict_sha256(reloaded.vit) == record["state_sha256"]


def test_init_stage_caches_deterministic_inits_only(workspace: Path) -> None:
    params = load_pipeline_params(workspace / "params.yaml")
    stages.run_weights(workspace / "params.yaml", Path("models/backbone"))
    model = with_backbone(params.run.model, Path("models/backbone"))
    record = compute_init_cache(model, workspace / "rrqr", progress=False)
    vit = ViTBackbone(model.backbone).vit
    weights = {name: linear.weight for name, linear in find_target_linears(vit, model.adapter).items()}
    entry = CacheEntry.locate(workspace / "rrqr", model.adapter, weights)
    assert record["file"] == entry.path.name and record["layers"] == 16 and entry.load() is not None
    lora = dataclasses.replace(model, adapter=dataclasses.replace(model.adapter, init="lora"))
    (workspace / "lora").mkdir()
    assert compute_init_cache(lora, workspace / "lora", progress=False)["file"] is None
    assert not list((workspace / "lora").iterdir())


def test_init_stage_output_is_byte_identical_when_run_again(workspace: Path) -> None:
    params = workspace / "params.yaml"
    stages.run_weights(params, Path("models/backbone"))
    contents = []
    for out in (Path("first"), Path("second")):
        stages.run_init(params, Path("models/backbone"), out, progress=False)
        contents.append({path.name: path.read_bytes() for path in sorted(out.iterdir())})
    assert contents[0] == contents[1] and len(contents[0]) == 2  # the cache file and init.json


def _kill_training_after_step_2(workspace: Path) -> None:
    """Run ``python -m pipeline train`` (the real command) and SIGKILL it once step 2's checkpoint is on disk."""
    pause = workspace / "paused"
    pause.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "STAGE_PAUSE_FILE": str(pause), "STAGE_PAUSE_STEP": "2",
           "STAGE_RUN_DIR": str(workspace / f"models/train{PARTIAL_SUFFIX}")}  # fmt: skip
    command = [sys.executable, "-m", "tests.pipeline.stage_worker", "train", "--weights", "models/backbone",
               "--init-cache", "models/init", "--out", "models/train", "--metrics", "metrics/train.json",
               "--no-progress"]  # fmt: skip
    with open(workspace / "train.log", "w") as log:
        process = subprocess.Popen(command, cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not pause.is_file():
            assert process.poll() is None, f"ended early:\n{(workspace / 'train.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "training never reached step 2"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_killed_training_resumes_only_with_unchanged_inputs(workspace: Path) -> None:
    """A training process killed (SIGKILL) after step 2's checkpoint leaves its partial run folder; the next run
    with the same inputs resumes from step 2, one with another lr starts afresh."""
    params = workspace / "params.yaml"
    stages.run_data(params, Path("data/prepared"), CHECKSUMS)
    stages.run_weights(params, Path("models/backbone"))
    stages.run_init(params, Path("models/backbone"), Path("models/init"), progress=False)
    paths = (Path("models/backbone"), Path("models/init"), Path("models/train"), Path("metrics/train.json"))

    _kill_training_after_step_2(workspace)
    partial = workspace / f"models/train{PARTIAL_SUFFIX}"
    assert (partial / "checkpoints" / "step_0000002").is_dir() and not (workspace / "models/train").exists()
    assert not (partial / "checkpoints" / "step_0000004").exists()
    assert stages.run_train(params, *paths, progress=False)["resumed_from"] == 2
    assert not partial.exists()

    _kill_training_after_step_2(workspace)
    edit_params(params, "train.lr", 0.002)  # another run: its partial folder must not be resumed
    assert stages.run_train(params, *paths, progress=False)["resumed_from"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_stop_signal_keeps_the_partial_run_and_the_rerun_resumes_from_its_step(
    workspace: Path, signum: signal.Signals
) -> None:
    """``python -m pipeline train`` signalled mid-run (a scheduler's preemption) checkpoints its step, says so in
    one line and exits ``128 + signum``, leaving the partial run folder with its run key; the rerun resumes from
    that step."""
    params = workspace / "params.yaml"
    edit_params(params, "train.iterations", 40)
    stages.run_data(params, Path("data/prepared"), CHECKSUMS)
    stages.run_weights(params, Path("models/backbone"))
    stages.run_init(params, Path("models/backbone"), Path("models/init"), progress=False)
    partial = workspace / f"models/train{PARTIAL_SUFFIX}"
    command = [sys.executable, "-m", "pipeline", "train", "--weights", "models/backbone", "--init-cache",
               "models/init", "--out", "models/train", "--metrics", "metrics/train.json", "--no-progress"]  # fmt: skip
    process = start_when_checkpointed(command, partial, logs=workspace, cwd=workspace)
    os.kill(process.pid, signum)
    step = stopped_step(process, partial, workspace, signum, iterations=40, cwd=workspace)
    assert (partial / train_stage.KEY_FILE).is_file() and not (workspace / "models/train").exists()

    paths = (Path("models/backbone"), Path("models/init"), Path("models/train"), Path("metrics/train.json"))
    assert stages.run_train(params, *paths, progress=False)["resumed_from"] == step
    assert not partial.exists()


def test_train_stage_records_the_samples_of_each_manifest_subset(workspace: Path) -> None:
    params = workspace / "params.yaml"
    manifest = "data/prepared/synth_src_train.parquet"
    edit_params(params, "data.subset", {"synth_src_train": 3})  # of the 4 tiny source images
    stages.run_data(params, Path("data/prepared"), CHECKSUMS)
    stages.run_weights(params, Path("models/backbone"))
    stages.run_init(params, Path("models/backbone"), Path("models/init"), progress=False)
    paths = (Path("models/backbone"), Path("models/init"), Path("models/train"), Path("metrics/train.json"))
    assert stages.run_train(params, *paths, progress=False)["train_samples"] == 3
    record = pq.read_table(workspace / "models/train" / train_stage.SAMPLES_FILE).to_pylist()
    rows = sorted(np.random.default_rng([0, *b"synth_src_train"]).choice(4, 3, replace=False).tolist())
    samples = read_manifest(manifest)
    assert record == [
        {"manifest": manifest, "row": row, "name": samples[row].image.stem, "image": str(samples[row].image)}
        for row in rows
    ]


# Presets


@pytest.mark.parametrize("name", ["paper-g2cbm", "paper-gs2cbm", "paper-gsu2cbm", "paper-c2bm", "table"])
def test_presets_validate_and_write_the_generated_comments(tmp_path: Path, name: str) -> None:
    shutil.copytree(PROJECT / "presets", tmp_path / "presets")
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    assert name in available_presets(tmp_path / "params.yaml")
    result = runner.invoke(app, ["preset", name, "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "params.yaml").read_text()
    assert "# optimiser steps" in text and "# scaling s = alpha / (rank_main + rank_sub)" in text
    assert text == render_params(read_yaml(tmp_path / "params.yaml"))  # comments from the fields' help
    preset = read_preset(PROJECT / "presets" / f"{name}.yaml")
    written = yaml.safe_load(text)
    for section, values in preset.items():
        for key, value in values.items():
            if not isinstance(value, dict) or f"{section}.{key}" in FREE_FORM:
                assert written[section][key] == value, f"{section}.{key}"
    load_pipeline_params(tmp_path / "params.yaml")


def test_paper_presets_hold_the_published_recipe(tmp_path: Path) -> None:
    def applied(name: str):
        shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
        apply_preset(tmp_path / "params.yaml", str(PROJECT / "presets" / f"{name}.yaml"))
        return load_pipeline_params(tmp_path / "params.yaml")

    g = applied("paper-g2cbm")
    model, train, data = g.run.model, g.run.train, g.run.data
    assert (model.backbone.name, model.backbone.patch_size, model.backbone.img_size) == (
        "vit_large_patch14_dinov2",
        16,
        512,
    )
    assert model.backbone.out_indices == (7, 11, 15, 23) and model.head.kind == "mask2former"
    assert (model.adapter.rank_main, model.adapter.rank_sub, model.adapter.lr_mult_sub) == (32, 4, 0.5)
    assert (train.iterations, train.batch_size, train.lr) == (40000, 4, 1e-4)
    assert data.transform.crop_size == (512, 512) and (g.run.eval.crop, g.run.eval.stride) == (512, 341)
    assert [Path(t).stem for t in g.run.eval.targets] == ["cityscapes_val", "bdd100k_val", "mapillary_val"]
    transforms = [g.run.eval.target_transform(t, g.run.data.val_transform) for t in g.run.eval.targets]
    assert [t.fit for t in transforms] == [
        None,
        None,
        (2048, 1024),
    ]  # Mapillary alone is fitted into 2048 x 1024
    assert g.datasets.synth is None and g.datasets.real["gta5"] is None
    assert data.subset == {"gta5_train": 12403}  # the published GTAV subset
    gs, gsu = applied("paper-gs2cbm").run.data, applied("paper-gsu2cbm").run.data
    assert [Path(t).stem for t in gs.train] == ["gta5_train", "synthia_train"]
    assert [Path(t).stem for t in gsu.train] == ["gta5_train", "synthia_train", "urbansyn_train"]
    assert gs.subset == gsu.subset == {"gta5_train": 12403}  # SYNTHIA and UrbanSyn whole
    c = applied("paper-c2bm")
    assert c.run.model.adapter.rank_sub == 2 and [Path(t).stem for t in c.run.data.train] == [
        "cityscapes_train"
    ]
    assert c.run.data.subset == {}
    assert [Path(t).stem for t in c.run.eval.targets] == ["bdd100k_val", "mapillary_val"]


def test_a_bad_preset_leaves_params_untouched(tmp_path: Path) -> None:
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  iteration: 10\n")
    with pytest.raises(ParamsError, match=r"preset key 'train.iteration' is not in params.yaml"):
        apply_preset(tmp_path / "params.yaml", str(typo))
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("model:\n  adapter:\n    init: svd\n")
    with pytest.raises(ParamsError, match=r"init must be one of \['rrqr'.*got 'svd'"):
        apply_preset(tmp_path / "params.yaml", str(invalid))
    with pytest.raises(FileNotFoundError, match="no preset 'no-such-preset'"):
        apply_preset(tmp_path / "params.yaml", "no-such-preset")
    assert (tmp_path / "params.yaml").read_text() == before


# Comparison table


def test_compare_queues_one_experiment_per_method_and_seed() -> None:
    preset = yaml.safe_load((PROJECT / "presets" / "table.yaml").read_text())
    overrides = compare.preset_overrides(preset)
    assert all("=" in pair and "." in pair.split("=")[0] for pair in overrides)
    commands = compare.queue_commands(["frozen", "rrqr"], [0, 1], overrides, "cmp")
    assert len(commands) == 4
    frozen = commands[0]
    assert frozen[:6] == ["dvc", "exp", "run", "--queue", "-n", "cmp-frozen-s0"]
    sets = [frozen[i + 1] for i, arg in enumerate(frozen) if arg == "-S"]
    assert sets == [*overrides, "model.tuning=frozen", "base.seed=0"]
    assert frozen[-2:] == ["evaluate", "analyze"]
    assert "model.adapter.init=rrqr" in commands[3] and "base.seed=1" in commands[3]
    with pytest.raises(ValueError, match="unknown method"):
        compare.queue_commands(["dora"], [0], [], "cmp")
    assert compare.preset_overrides({"train": {"grad_clip": None, "lr": 1e-05}}) == [
        "train.grad_clip=null",
        "train.lr=1e-05",
    ]


def test_compare_table_reports_mean_and_spread_per_method_and_domain() -> None:
    scores = {
        "rrqr": {"synth_tex": [0.2, 0.4], "synth_fog": [0.3, 0.3], "mean": [0.25, 0.35], "params": [1.5e6] * 2,
                 "efficiency_main": [0.9, 0.7], "efficiency_sub": [0.5, 0.5], "grassmann_distance": [2.0, 3.0]},
        "frozen": {"synth_tex": [0.1], "synth_fog": [0.2], "mean": [0.15]},
    }  # fmt: skip
    table = compare.markdown_table(scores, "note")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == (
        "| method | seeds | trainable params | synth_fog | synth_tex | mean | rank efficiency | Grassmann distance |"
    )
    # methods in METHODS order; no adapters, no analysis
    assert rows[1].startswith("| Frozen backbone | 1 | - | 20.0 | 10.0 | 15.0 | - | - |")
    tex, mean = 100 * statistics.stdev([0.2, 0.4]), 100 * statistics.stdev([0.25, 0.35])
    assert rows[2] == (
        f"| RecycleLoRA | 2 | 1.50 M | 30.0 ± 0.0 | 30.0 ± {tex:.1f} | 30.0 ± {mean:.1f} | 0.800 / 0.500 | 2.500 |"
    )
    assert "Difference to" not in table  # no differences given


def test_compare_reads_methods_and_scores_from_exp_show_rows() -> None:
    def row(state, tuning, init, tex, mean):
        return {
            "Experiment": "cmp-x", "State": state, "model.tuning": tuning, "model.adapter.init": init,
            "synth_tex_val.mIoU": tex, "synth_tex_val.aAcc": 0.9, "mean_mIoU": mean, "final_loss": 0.5,
            "trainable_parameters/total": 1000 if tuning == "full" else 10,
            "trainable_parameters/head": 5,
        }  # fmt: skip

    rows = [
        row("Success", "adapters", "pissa", 0.2, 0.3),
        row(None, "adapters", "pissa", 0.4, None),  # finished, its queue entry gone; a NaN mean is left out
        row("Failed", "adapters", "pissa", 0.9, 0.9),
        row("Running", "full", "rrqr", 0.9, 0.9),
        row("Success", "full", "rrqr", 0.1, 0.1),  # full fine-tuning: the unused init does not name it
    ]
    assert compare.collect(rows) == {
        "pissa": {"synth_tex": [0.2, 0.4], "mean": [0.3], "params": [10.0, 10.0]},
        "full": {"synth_tex": [0.1], "mean": [0.1], "params": [1000.0]},
    }


def test_evaluate_resizes_each_target_by_its_own_rule(
    tiny_benchmark: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    source = Path(tiny_benchmark["synth_night"]["val"])
    bench = Path(shutil.copytree(source.parent, tmp_path / "bench"))
    plain, fitted = bench / source.name, bench / "fitted_val.parquet"
    shutil.copy(plain, fitted)  # the same images and labels under a second name
    config = tiny_model_config(tuning="frozen")
    torch.manual_seed(0)
    built = build_segmentor(config)
    checkpoint = save_segmentor(
        tmp_path / "model.safetensors", built.model, config, backbone_sha256=built.backbone_sha256
    )
    rule = EvalConfig(
        targets=(str(plain), str(fitted)),
        crop=28,
        stride=28,
        resize={"fitted_val": ResizeConfig(fit=(56, 28))},
    )
    scored = evaluate_targets(checkpoint, rule, EvalTransformConfig(), "cpu", progress=False)
    unresized = evaluate_targets(
        checkpoint, dataclasses.replace(rule, resize={}), EvalTransformConfig(), "cpu", progress=False
    )
    # 96 x 48 images fitted into 56 x 28 are scored at 56 x 28: only that target changes
    assert scored.metrics[plain.stem].confusion.tolist() == unresized.metrics[plain.stem].confusion.tolist()
    assert (
        unresized.metrics["fitted_val"].confusion.tolist() == unresized.metrics[plain.stem].confusion.tolist()
    )
    assert (
        scored.metrics["fitted_val"].confusion.tolist() != unresized.metrics["fitted_val"].confusion.tolist()
    )
