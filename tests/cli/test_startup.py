"""Start-up: ``--help`` of every command (``recyclelora-cli`` and ``python -m pipeline``) imports only the command
line (typer, rich, the option definitions), never torch, MLflow or the other heavy dependencies. The time it
takes is measured by ``benchmarks/bench_startup.py``, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
#: Top-level modules a ``--help`` must not import: each costs from a tenth of a second (numpy) to seconds (torch).
HEAVY = (
    "torch", "torchvision", "timm", "transformers", "mlflow", "dvc", "onnx", "onnxruntime", "onnxscript",
    "pyarrow", "cv2", "matplotlib", "scipy", "PIL", "numpy", "safetensors",
)  # fmt: skip

#: Runs in a fresh interpreter: ``--help`` of every command of the app named in argv, then what got imported.
SCRIPT = """
import importlib, json, sys
import typer
from typer.testing import CliRunner

module, name = sys.argv[1].split(":")
app = getattr(importlib.import_module(module), name)

def paths(command, prefix=()):
    yield prefix
    for sub_name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, (*prefix, sub_name))

runner = CliRunner()
helps = {}
for path in paths(typer.main.get_command(app)):
    result = runner.invoke(app, [*path, "--help"])
    helps[" ".join(path)] = (result.exit_code, result.output[:200])
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"helps": helps, "heavy": heavy}))
"""


@pytest.mark.parametrize("app", ["recyclelora.cli.main:app", "pipeline.cli:app"])
def test_help_of_every_command_imports_no_heavy_dependency(app: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, app, json.dumps(HEAVY)],
        cwd=PROJECT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    failed = {path: output for path, (code, output) in report["helps"].items() if code != 0}
    assert not failed, failed
    assert len(report["helps"]) > 5, report["helps"]  # the group and its commands were all walked
    assert report["heavy"] == [], f"--help imported {report['heavy']}"


def test_the_library_never_imports_the_pipeline() -> None:
    """Imports flow one way: ``pipeline`` uses ``recyclelora``; no library module names ``pipeline``."""
    offenders = [
        str(path.relative_to(PROJECT))
        for path in (PROJECT / "recyclelora").rglob("*.py")
        if any(
            line.lstrip().startswith(("import pipeline", "from pipeline"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
