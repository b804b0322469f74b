"""docs/img/mlflow-datasets-models.png: the MLflow runs table (Dataset and Models columns) above the registered
model's page, cropped from the screenshots the UI test takes of a tiny pipeline against a real server:

    RECYCLELORA_UI_SHOTS=/tmp/shots pytest tests/pipeline/test_mlflow_ui.py
    python -m benchmarks.mlflow_ui_figure /tmp/shots docs/img/mlflow-datasets-models.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

#: Boxes (left, top, right, bottom) of the 1900 x 1100 screenshots: the runs table with its toolbar, and the
#: registered model's title and versions (without the sidebar and the assistant panel).
RUNS_BOX = (212, 180, 1392, 425)
MODEL_BOX = (212, 15, 1392, 645)


def figure(shots: Path, out: Path) -> Path:
    """Stack the crops of ``shots``/runs.png and ``shots``/model.png into the PNG ``out`` (palette colours)."""
    runs = Image.open(shots / "runs.png").convert("RGB").crop(RUNS_BOX)
    model = Image.open(shots / "model.png").convert("RGB").crop(MODEL_BOX)
    gap = 12
    canvas = Image.new("RGB", (runs.width, runs.height + gap + model.height), "white")
    canvas.paste(runs, (0, 0))
    canvas.paste(model, (0, runs.height + gap))
    canvas.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shots", type=Path, help="folder of the test's runs.png and model.png")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args()
    print(figure(args.shots, args.out))


if __name__ == "__main__":
    main()
