"""What the MLflow UI shows of a pipeline's datasets and model (issue 23 item 5): the runs page's Dataset and
Models columns and the registered model's page, rendered by headless Chromium against a real server."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline import stages
from pipeline.presets import apply_preset
from pipeline.stages._common import open_stage
from tests.cli import SIZE, save_tiny_checkpoint, single_thread
from tests.pipeline.test_mlflow_inputs import md5_8, write_manifest
from tests.pipeline.test_stages import TINY, edit_params
from tests.pipeline.test_tracking import CHROMIUM, ENV_OWNED, closed_port, page_text, running_mlflow_server
from tests.pipeline.workspace import make_workspace

#: The tiny params' manifests (tiny_params.yaml) -> (rows, the stage that reads them, their context).
MANIFESTS = {
    "data/prepared/synth_src_train.parquet": (4, "train", "training"),
    "data/prepared/synth_src_val.parquet": (2, "train", "validation"),
    "data/prepared/synth_tex_val.parquet": (3, "evaluate", "evaluation"),
    "data/prepared/synth_fog_val.parquet": (5, "evaluate", "evaluation"),
}
#: The tiny pipeline's run name, so its registered model's name.
RUN_NAME = "rrqr-2+1-vits14-s0"
MODEL = f"recyclelora-{RUN_NAME}"
#: Where the test saves its screenshots of the pages it checks, when set (docs/img/mlflow-datasets-models.png).
SHOTS_ENV = "RECYCLELORA_UI_SHOTS"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend) for the module."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), closed_port()) as uri:
        yield uri


@pytest.fixture(scope="module")
def packaged(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny workspace whose stages train and evaluate logged their manifests (no training: the stage runs
    open and close) and whose package stage logged and registered a tiny checkpoint, all against
    ``server``; the workspace."""
    root = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as patch, single_thread():
        for name in ENV_OWNED:
            patch.delenv(name, raising=False)
        make_workspace(root, patch)
        patch.setenv("MLFLOW_TRACKING_URI", server)
        apply_preset(root / "params.yaml", str(TINY))
        for key, value in (("eval.crop", SIZE), ("eval.stride", 37), ("track.register_model", True)):
            edit_params(root / "params.yaml", key, value)
        patch.chdir(root)
        for path, (rows, _, _) in MANIFESTS.items():
            write_manifest(root, path, rows)
        for stage in ("train", "evaluate"):
            with open_stage(stage, root / "params.yaml"):
                pass
        save_tiny_checkpoint(root / "merged.safetensors", seed=5)
        scores = {"synth_tex_val": {"mIoU": 0.25}, "synth_fog_val": {"mIoU": 0.5}, "mean_mIoU": 0.375}
        (root / "eval.json").write_text(json.dumps(scores))
        stages.run_package(
            root / "params.yaml", root / "merged.safetensors", root / "eval.json", root / "out"
        )
        mlflow.set_tracking_uri(None)  # stage_run set the process's store
    yield root


def chromium_screenshot(url: str, out: Path) -> None:
    """Save headless Chromium's PNG (1900 x 1100) of ``url`` once the MLflow UI rendered it, as
    :func:`~tests.pipeline.test_tracking.page_text` renders it."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1900,1100"]
    command += ["--virtual-time-budget=30000", "--hide-scrollbars", f"--screenshot={out}", url]
    subprocess.run(command, check=True, capture_output=True, timeout=240)


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium for a headless browser (apt-get install chromium)"
)
def test_mlflow_ui_shows_the_stages_datasets_and_the_registered_model(server: str, packaged: Path) -> None:
    client = MlflowClient(server)
    experiment_id = client.get_experiment_by_name("recyclelora").experiment_id
    runs = {run.info.run_name: run for run in client.search_runs([experiment_id])}
    assert sorted(runs) == sorted(["evaluate", "package", "train", RUN_NAME])
    # Sorted by anything but the start time, the runs table lists the stage runs as rows of their own (nested
    # under their parent, they stay collapsed: the expansion is the browser's local state, not the URL's).
    order = quote("tags.`mlflow.runName`")
    pages = {
        "runs": f"{server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&orderByKey={order}&orderByAsc=true",
        "model": f"{server}/#/models/{quote(MODEL)}",
    }
    table, model = (page_text(url) for url in pages.values())

    # The Dataset column: each stage run's manifests, as name (digest) context.
    table = table[table.index("Run Name Created Dataset") :]
    for path, (_, stage, context) in MANIFESTS.items():
        dataset = f"{Path(path).stem} ({md5_8(packaged / path)}) {context}"
        assert dataset in table, (stage, dataset, table[:2000])
    # The Models column: the package run's registered model version, beside its source.
    assert f"dvc.yaml:package {MODEL} v1" in table, table[:2000]

    # The registered model's page: version 1, tagged with the package run and the key params.
    assert f"Registered Models {MODEL}" in model, model[:2000]
    versions = model[model.index("Version Registered at") :]
    assert "Version 1" in versions and f"run_id : {runs['package'].info.run_id}" in versions, versions[:2000]
    assert "model.adapter.rank_main : 2" in versions and "eval.crop : 56" in versions, versions[:2000]

    if os.environ.get(SHOTS_ENV):  # docs/img/mlflow-datasets-models.png: benchmarks/mlflow_ui_figure.py
        shots = Path(os.environ[SHOTS_ENV])
        shots.mkdir(parents=True, exist_ok=True)
        for name, url in pages.items():
            chromium_screenshot(url, shots / f"{name}.png")
