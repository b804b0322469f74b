"""Publishing: writing the method table with its chart (``docs/comparison.md``) and the training curve with
its chart and record (``docs/training-curve.md``, ``.json``), and logging the written files as artifacts of an
MLflow run ``compare-<prefix>`` in the stages' experiment, tagged with the table's name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from pipeline.compare.curve_record import CurveRow, record_path, write_record
from pipeline.compare.render import curve_markdown, markdown_table, plot_curve, plot_differences
from pipeline.tracking import TABLE_TAG, get_or_create_experiment
from recyclelora.eval.bootstrap import BootstrapInterval
from recyclelora.io import atomic_write_text

#: The MLflow experiment of the stages (``pipeline.tracking.stage_run``'s default).
MLFLOW_EXPERIMENT = "recyclelora"


def write_comparison(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    differences: Mapping[str, Mapping[str, BootstrapInterval]],
    note: str,
    out: Path,
) -> list[Path]:
    """Write the table to ``out`` and, with ``differences``, their chart to ``out.parent/img/<out.stem>.png``
    (:func:`plot_differences`); return the written files."""
    files = [out]
    chart = None
    if differences:
        files.append(plot_differences(differences, out.parent / "img" / f"{out.stem}.png"))
        chart = files[1].relative_to(out.parent).as_posix()
    atomic_write_text(out, markdown_table(scores, note, differences, chart))
    return files


def log_comparison(uri: str, prefix: str, rev: str, files: Sequence[Path]) -> str:
    """Log ``files`` as artifacts (``comparison/``) of a new run ``compare-<prefix>``, tagged
    ``recyclelora.table=<prefix>``, in the stages' MLflow experiment of store ``uri``; return its id. The
    experiment is got or created as the stages do it (:func:`pipeline.tracking.get_or_create_experiment`)."""
    mlflow.set_tracking_uri(uri)
    experiment = get_or_create_experiment(MlflowClient(uri), MLFLOW_EXPERIMENT, uri)
    tags = {"stage": "compare", "baseline_rev": rev, TABLE_TAG: prefix}
    with mlflow.start_run(experiment_id=experiment, run_name=f"compare-{prefix}", tags=tags) as run:
        for path in files:
            mlflow.log_artifact(str(path), "comparison")
    return run.info.run_id


def write_curve(rows: Mapping[int, CurveRow], note: str, out: Path) -> list[Path]:
    """Write the curve's table to ``out``, its chart to ``out.parent/img/<out.stem>.png`` and its record to
    ``out.with_suffix(".json")``; return the three."""
    chart = plot_curve(rows, out.parent / "img" / f"{out.stem}.png")
    atomic_write_text(out, curve_markdown(rows, note, chart.relative_to(out.parent).as_posix()))
    return [out, chart, write_record(rows, record_path(out))]
