"""The merged model as an MLflow pyfunc (pipeline/mlflow_model.py) and the package stage that logs, registers
and serves it: its label maps are recyclelora-cli predict's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.models import Model
from PIL import Image

from pipeline import stages
from pipeline.mlflow_model import SIGNATURE, model_config, pyfunc_arguments
from pipeline.presets import apply_preset
from recyclelora.config import EvalConfig
from recyclelora.data.images import read_image
from recyclelora.data.transform_config import EvalTransformConfig
from tests.cli import SIZE, invoke, save_tiny_checkpoint, single_thread, write_dataset
from tests.pipeline.test_stages import TINY, edit_params
from tests.pipeline.workspace import PROJECT, make_workspace

WINDOW = EvalConfig(crop=SIZE, stride=37)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint and two 56 x 84 images."""
    root = tmp_path_factory.mktemp("pyfunc")
    save_tiny_checkpoint(root / "model.safetensors", seed=5)
    write_dataset(root, "alpha", "val", ["a0", "a1"], seed=0)
    return root


def cli_label_map(work: Path, image: Path, out: Path, config: EvalConfig) -> np.ndarray:
    """``recyclelora-cli predict``'s trainIds for ``image`` with ``config``'s windows."""
    window = ("--crop", config.crop, "--stride", config.stride, "--device", "cpu")
    result = invoke("predict", image, "--model", work / "model.safetensors", *window, "--out", out)
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(out / "pred" / f"{image.stem}.png"))


def test_pyfunc_label_maps_are_the_cli_predictions(work: Path, tmp_path: Path) -> None:
    config = model_config(WINDOW, EvalTransformConfig())
    mlflow.pyfunc.save_model(tmp_path / "model", **pyfunc_arguments(work / "model.safetensors", config))
    assert Model.load(tmp_path / "model").signature == SIGNATURE
    requirements = (tmp_path / "model" / "requirements.txt").read_text().split()
    assert {line.split("==")[0] for line in requirements} >= {"recyclelora", "torch", "timm", "mlflow"}
    images = [work / "alpha" / "val" / f"{stem}.png" for stem in ("a0", "a1")]
    batch = np.stack([read_image(image) for image in images])
    maps = mlflow.pyfunc.load_model(tmp_path / "model").predict(batch)
    assert maps.dtype == np.uint8 and maps.shape == (2, SIZE, 84)
    for image, labels in zip(images, maps):
        np.testing.assert_array_equal(labels, cli_label_map(work, image, tmp_path / "cli", WINDOW))
    whole = model_config(EvalConfig(crop=SIZE, stride=37, whole=True), EvalTransformConfig())
    assert whole["sliding"] is None and config["sliding"]["crop"] == (SIZE, SIZE)


def package(root: Path, work: Path, monkeypatch: pytest.MonkeyPatch, *, register: bool) -> Path:
    """Run the package stage in a tiny workspace at ``root`` on ``work``'s checkpoint and made-up scores."""
    root.mkdir(exist_ok=True)
    make_workspace(root, monkeypatch)
    apply_preset(root / "params.yaml", str(TINY))
    edit_params(root / "params.yaml", "eval.crop", SIZE)
    edit_params(root / "params.yaml", "eval.stride", 37)
    edit_params(root / "params.yaml", "track.register_model", register)
    monkeypatch.chdir(root)
    scores = {"synth_tex_val": {"mIoU": 0.25}, "synth_fog_val": {"mIoU": None}, "mean_mIoU": 0.25}
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps(scores))
    stages.run_package(
        root / "params.yaml", work / "model.safetensors", Path("metrics/eval.json"), Path("out")
    )
    return root


def test_package_stage_logs_the_model_with_its_scores_and_registers_it(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = package(tmp_path, work, monkeypatch, register=True)
    assert Model.load(root / "out").signature == SIGNATURE
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (version,) = client.search_model_versions()
    assert version.name == "recyclelora-rrqr-2+1-vits14-s0" and version.version == 1
    child = client.get_run(version.run_id)
    assert child.info.run_name == "package"
    assert version.tags["run_id"] == child.info.run_id
    assert version.tags["parent_run_id"] == child.data.tags["mlflow.parentRunId"]
    assert version.tags["model.adapter.rank_main"] == "2" and version.tags["eval.crop"] == str(SIZE)
    assert child.data.tags["recyclelora.registered_model"] == "models:/recyclelora-rrqr-2+1-vits14-s0/1"
    (logged,) = client.search_logged_models([child.info.experiment_id])
    assert version.source == f"models:/{logged.model_id}"
    assert logged.source_run_id == child.info.run_id and logged.params["train.iterations"] == "4"
    assert {m.key: m.value for m in logged.metrics} == {"mean_mIoU": 0.25, "mIoU/synth_tex_val": 0.25}
    assert child.data.params["track.register_model"] == "True"


def test_package_stage_registers_nothing_unless_asked(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package(tmp_path, work, monkeypatch, register=False)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert client.search_registered_models() == []
    (run,) = client.search_runs(
        [client.get_experiment_by_name("recyclelora").experiment_id], "tags.stage='package'"
    )
    assert "recyclelora.registered_model" not in run.data.tags
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert logged.source_run_id == run.info.run_id and logged.name == "model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    """Poll ``url``/ping until the server answers; fail with its output if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited {server.returncode}:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer within {timeout} s")


@pytest.mark.slow
def test_served_registered_model_answers_with_the_cli_label_map(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package(tmp_path / "ws", work, monkeypatch, register=True)
    url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/recyclelora-rrqr-2+1-vits14-s0/1",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(url, server)
        image = work / "alpha" / "val" / "a0.png"
        body = json.dumps({"inputs": read_image(image)[None].tolist()}).encode()
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            (served,) = np.asarray(json.load(reply)["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    np.testing.assert_array_equal(served, cli_label_map(work, image, tmp_path / "cli", WINDOW))


def test_a_lost_tracking_server_costs_the_package_stage_its_logging_not_its_model(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server stops answering when the model is logged: the model folder (the DVC output) is still written
    and the stage succeeds with one warning saying how to log it later; a server that answers with a refusal is
    an error as before."""
    import requests
    from mlflow.exceptions import MlflowException

    def lost(**kwargs: object) -> None:
        try:
            raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")
        except requests.exceptions.ConnectionError as error:
            raise MlflowException("API request to endpoint /api/2.0/mlflow/logged-models failed") from error

    monkeypatch.setattr(mlflow.pyfunc, "log_model", lost)
    root = package(tmp_path / "lost", work, monkeypatch, register=True)
    assert Model.load(root / "out").signature == SIGNATURE
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "(ConnectionError: [Errno 111] Connection refused)" in warning and "dvc repro -f package" in warning
    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_registered_models() == []

    def refused(**kwargs: object) -> None:
        raise MlflowException("Invalid model name", error_code="INVALID_PARAMETER_VALUE")

    monkeypatch.setattr(mlflow.pyfunc, "log_model", refused)
    with pytest.raises(MlflowException, match="Invalid model name"):
        package(tmp_path / "refused", work, monkeypatch, register=False)
    assert not (tmp_path / "refused" / "out").exists()
