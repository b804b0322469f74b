"""Reports of an :class:`EvalResult`: a rich table, flat JSON metrics, Parquet per-class and per-image tables,
confusion matrices as CSV and a per-class IoU bar chart. Every file is written atomically; metrics are
percentages in the table and fractions in the files.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from recyclelora.eval.evaluate import EvalResult
from recyclelora.io import atomic_path, atomic_write_text

CLASS_TABLE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("class_id", pa.int32()),
        ("class_name", pa.string()),
        ("iou", pa.float64()),
        ("acc", pa.float64()),
        ("tp", pa.int64()),
        ("fp", pa.int64()),
        ("fn", pa.int64()),
    ]
)
IMAGE_TABLE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("image", pa.string()),
        ("class_id", pa.int32()),
        ("tp", pa.int64()),
        ("fp", pa.int64()),
        ("fn", pa.int64()),
    ]
)


def _finite(value: float) -> float | None:
    """``value`` as a JSON-safe float (NaN -> None)."""
    return None if math.isnan(value) else float(value)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def metrics_table(result: EvalResult) -> Table:
    """Per-class IoU (rows) per dataset (columns) with mIoU and aAcc rows and a ``mean`` column, in percent."""
    names = list(result.metrics)
    table = Table(title=f"mIoU over {len(names)} dataset(s): {_percent(result.mean_miou)}")
    table.add_column("class")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("mean", justify="right")

    def add_row(label: str, values: list[float], **style: object) -> None:
        kept = [v for v in values if not math.isnan(v)]
        mean = float(np.mean(kept)) if kept else math.nan
        table.add_row(label, *map(_percent, values), _percent(mean), **style)

    for index, class_name in enumerate(result.class_names):
        add_row(class_name, [m.iou[index] for m in result.metrics.values()])
    table.add_section()
    add_row("mIoU", [m.miou for m in result.metrics.values()], style="bold")
    add_row("aAcc", [m.aacc for m in result.metrics.values()])
    return table


def metrics_dict(result: EvalResult) -> dict:
    """Flat, DVC-friendly metrics: ``{dataset: {mIoU, aAcc, mAcc, IoU: {class: iou}}, "mean_mIoU": ...}``."""
    out: dict = {}
    for dataset, m in result.metrics.items():
        out[dataset] = {
            "mIoU": _finite(m.miou),
            "aAcc": _finite(m.aacc),
            "mAcc": _finite(m.macc),
            "num_images": result.num_images[dataset],
            "IoU": {name: _finite(v) for name, v in zip(m.class_names, m.iou)},
        }
    out["mean_mIoU"] = _finite(result.mean_miou)
    return out


def write_metrics_json(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Write :func:`metrics_dict` as JSON (NaN written as ``null``)."""
    atomic_write_text(path, json.dumps(metrics_dict(result), indent=2, allow_nan=False) + "\n")
    return Path(path)


def write_class_table(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Write one Parquet row per (dataset, class) with IoU, accuracy and TP/FP/FN counts."""
    rows = [
        {
            "dataset": dataset,
            "class_id": index,
            "class_name": class_name,
            "iou": _finite(m.iou[index]),
            "acc": _finite(m.acc[index]),
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
        }
        for dataset, m in result.metrics.items()
        for index, (class_name, tp, fp, fn) in enumerate(zip(m.class_names, m.tp, m.fp, m.fn))
    ]
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=CLASS_TABLE_SCHEMA), tmp)
    return Path(path)


def write_image_table(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Write one Parquet row per (dataset, image, class) with the image's TP/FP/FN counts, in dataset, sample
    and class order; summed over a dataset's images they are its ``per_class.parquet`` counts."""
    tables = []
    for dataset, counts in result.image_counts.items():
        images, classes = counts.shape[:2]
        columns = {
            "dataset": pa.array([dataset] * (images * classes), pa.string()),
            "image": pa.array(np.repeat(result.image_names[dataset], classes), pa.string()),
            "class_id": pa.array(np.tile(np.arange(classes, dtype=np.int32), images)),
            **{key: pa.array(counts[..., index].ravel()) for index, key in enumerate(("tp", "fp", "fn"))},
        }
        tables.append(pa.table(columns, schema=IMAGE_TABLE_SCHEMA))
    with atomic_path(path) as tmp:
        pq.write_table(pa.concat_tables(tables), tmp)
    return Path(path)


def write_confusion_csvs(result: EvalResult, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``<folder>/<dataset>.csv``: rows = ground truth, columns = prediction, class names as header."""
    paths = []
    for dataset, m in result.metrics.items():
        path = Path(folder) / f"{dataset}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ground_truth\\prediction", *m.class_names])
            for class_name, row in zip(m.class_names, m.confusion):
                writer.writerow([class_name, *map(int, row)])
        paths.append(path)
    return paths


def plot_class_iou(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Grouped bar chart of per-class IoU (percent), one bar colour per dataset, rendered to PNG with the Agg
    canvas (no pyplot state); classes with NaN IoU get no bar."""
    names = result.class_names
    datasets = list(result.metrics)
    width = 0.8 / len(datasets)
    positions = np.arange(len(names))
    figure = Figure(figsize=(max(8.0, 0.6 * len(names)), 4.5), layout="constrained")
    axes = figure.add_subplot()
    for index, dataset in enumerate(datasets):
        m = result.metrics[dataset]
        offset = (index - (len(datasets) - 1) / 2) * width
        axes.bar(positions + offset, 100 * m.iou, width, label=f"{dataset} (mIoU {_percent(m.miou)})")
    axes.set_xticks(positions, names, rotation=45, ha="right")
    axes.set_title(f"per-class IoU, mean mIoU {_percent(result.mean_miou)}")
    axes.set_ylabel("IoU (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize="small")
    with atomic_path(path) as tmp:
        FigureCanvasAgg(figure).print_png(tmp)
    return Path(path)


def write_reports(result: EvalResult, folder: str | os.PathLike[str]) -> dict[str, Path | list[Path]]:
    """Write every report into ``folder``: ``metrics.json``, ``per_class.parquet``, ``per_image.parquet``,
    ``confusion/<dataset>.csv`` and ``class_iou.png``; returns their paths."""
    folder = Path(folder)
    return {
        "metrics": write_metrics_json(result, folder / "metrics.json"),
        "per_class": write_class_table(result, folder / "per_class.parquet"),
        "per_image": write_image_table(result, folder / "per_image.parquet"),
        "confusion": write_confusion_csvs(result, folder / "confusion"),
        "plot": plot_class_iou(result, folder / "class_iou.png"),
    }
