"""Install profiles: the library's own dependencies and its extras (pyproject.toml), and a one-line error naming
the extra wherever an optional dependency is missing (simulated by hiding the module)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from typer.testing import CliRunner

from recyclelora.errors import UserError, require_extra

PROJECT = Path(__file__).resolve().parents[1]
#: Optional dependency -> the extra that installs it.
EXTRAS = {
    "dvc": "pipeline", "mlflow": "pipeline", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
    "transformers": "mask2former", "cityscapesscripts": "cityscapes", "submitit": "cluster",
}  # fmt: skip


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` (and of its submodules, also those already imported) fail as if it were not
    installed."""
    for module in modules:
        for loaded in [module, *(key for key in sys.modules if key.startswith(f"{module}."))]:
            monkeypatch.setitem(sys.modules, loaded, None)


def test_install_profiles() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    base = {name(r) for r in project["dependencies"]}
    extras = {extra: {name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    assert not base & set(EXTRAS), "an optional dependency is in the base install"
    for module, extra in EXTRAS.items():
        assert module in extras[extra], (module, extra)
    assert project["optional-dependencies"]["all"] == ["recyclelora[pipeline,onnx,mask2former,cityscapes,cluster]"]
    assert "recyclelora[all]" in project["optional-dependencies"]["dev"]
    # the README's one set-up command and CI install everything
    assert 'pip install -e ".[dev]"' in (PROJECT / "README.md").read_text()
    assert 'pip install -e ".[dev]"' in (PROJECT / ".ci" / "run").read_text()
    # `pipeline/` is the workspace's stage code, not an installed top-level package
    find = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["recyclelora*"]


def test_require_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require_extra("json", "none", "Reading JSON").loads("1") == 1
    hide(monkeypatch, "onnx")
    with pytest.raises(UserError) as caught:
        require_extra("onnx", "onnx", "ONNX export")
    assert str(caught.value).startswith("ONNX export needs the onnx extra: pip install 'recyclelora[onnx]'")
    with pytest.raises(UserError, match=r"recyclelora\[onnx\]"):  # a submodule of a missing package
        require_extra("onnx.helper", "onnx", "ONNX export")


def test_an_installed_extra_missing_its_own_dependency_is_not_blamed_on_the_extra(
    monkeypatch, tmp_path
) -> None:
    (tmp_path / "installed_extra.py").write_text("import not_installed_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="not_installed_dependency_of_it"):
        require_extra("installed_extra", "x", "Something")


def test_mask2former_head_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from recyclelora.models.heads import HeadConfig, build_head

    hide(monkeypatch, "transformers")
    with pytest.raises(UserError, match=r"Mask2Former head .* pip install 'recyclelora\[mask2former\]'"):
        build_head(HeadConfig(kind="mask2former"), [32, 32, 32, 32])
    assert build_head(HeadConfig(kind="light", channels=32), [32, 32, 32, 32]) is not None


def test_onnx_export_and_inference_need_their_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from recyclelora.eval.predictors import OnnxPredictor
    from recyclelora.export import export_onnx

    (tmp_path / "model.onnx").write_bytes(b"not read")
    hide(monkeypatch, "onnx", "onnx_ir", "onnxscript", "onnxruntime")
    with pytest.raises(UserError, match=r"ONNX export needs the onnx extra"):
        export_onnx(torch.nn.Conv2d(3, 2, 1), tmp_path / "out.onnx", torch.zeros(1, 3, 8, 8))
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(UserError, match=r"onnxruntime\) needs the onnx extra"):
        OnnxPredictor(tmp_path / "model.onnx")


def test_embedded_backbone_conversion_needs_the_onnx_extra(monkeypatch, tmp_path: Path) -> None:
    from recyclelora.models import embedded

    monkeypatch.setattr(embedded, "fetch_wheel", lambda dest: pytest.fail("downloaded before the check"))
    hide(monkeypatch, "onnx")
    with pytest.raises(UserError, match=r"embedded DINOv2-S/14 .* needs the onnx extra"):
        embedded.embedded_dinov2_small(tmp_path)


def test_cityscapes_download_needs_its_extra(monkeypatch, tmp_path: Path) -> None:
    from recyclelora.data.download import download_cityscapes

    hide(
        monkeypatch,
        "cityscapesscripts",
        "cityscapesscripts.download",
        "cityscapesscripts.download.downloader",
    )
    with pytest.raises(UserError, match=r"Downloading Cityscapes needs the cityscapes extra"):
        download_cityscapes(tmp_path)


def test_pipeline_stages_need_their_extra(monkeypatch, tmp_path: Path) -> None:
    from pipeline.cli import app

    hide(monkeypatch, "mlflow")
    args = ["data", "--out", str(tmp_path / "out"), "--checksums", str(tmp_path / "c")]
    result = CliRunner().invoke(app, [*args, "--params", str(tmp_path / "p.yaml")])
    assert result.exit_code == 1
    assert "error: The DVC pipeline's stages (MLflow tracking) needs the pipeline extra" in " ".join(
        result.stderr.split()
    )
