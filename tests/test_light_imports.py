"""The configs import no heavy library: ``params.yaml`` is read and checked, and the data stage starts, without
torch (issue 21). Each import runs in a fresh interpreter, since this one has torch loaded already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "transformers", "mlflow")
CONFIG_MODULES = (
    "recyclelora.config",
    "recyclelora.models.config",
    "recyclelora.models.backbone_config",
    "recyclelora.models.heads.config",
    "recyclelora.adapters.config",
    "recyclelora.data.transform_config",
    "recyclelora.train.config",
    "recyclelora.data.synth_config",
)


def heavy_modules_after(statement: str) -> list[str]:
    """The :data:`HEAVY` libraries loaded by running ``statement`` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_a_config_module_imports_no_heavy_library(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


def test_the_data_stage_and_the_whole_params_check_need_no_torch() -> None:
    """The data stage's module and the check of all of params.yaml, which every stage runs before its work;
    MLflow records the stage."""
    statement = (
        "import pipeline.stages.data\n"
        "from pipeline.params import load_pipeline_params\n"
        "load_pipeline_params('params.yaml')"
    )
    assert set(heavy_modules_after(statement)) <= {"mlflow"}
