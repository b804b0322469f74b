"""Reports of :func:`recyclelora.analysis.rank_report`: rows, a summary, a rich table, a plot and files.

Per adapter layer: effective rank ``erank`` of the main and sub updates ``B A``, rank efficiency
``erank / r``, and the Grassmann distance and normalised similarity of the ``B_main`` and ``B_sub`` column
spaces. The summary holds the means over layers (NaN entries left out), for DVC metrics.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from recyclelora.analysis import LayerRankReport
from recyclelora.errors import InvalidInputError
from recyclelora.io import atomic_path, atomic_write_text

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.(.+)$")
_MEASURES = (
    "erank_main", "erank_sub", "efficiency_main", "efficiency_sub", "grassmann_distance", "similarity",
)  # fmt: skip

RANK_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("block", pa.int32()),
        ("module", pa.string()),
        ("rank_main", pa.int32()),
        ("rank_sub", pa.int32()),
        *((name, pa.float64()) for name in _MEASURES),
    ]
)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def rank_rows(reports: Sequence[LayerRankReport]) -> list[dict]:
    """One row per layer with its block index and module name (``blocks.3.attn.qkv`` -> 3, ``attn.qkv``;
    ``None`` and the full name outside ``blocks``); NaN measures become ``None``."""
    rows = []
    for report in reports:
        match = _BLOCK.search(report.layer)
        rows.append(
            {
                "layer": report.layer,
                "block": int(match.group(1)) if match else None,
                "module": match.group(2) if match else report.layer,
                "rank_main": report.rank_main,
                "rank_sub": report.rank_sub,
                **{name: _finite(getattr(report, name)) for name in _MEASURES},
            }
        )
    return rows


def rank_summary(reports: Sequence[LayerRankReport]) -> dict[str, float | int | None]:
    """``{"layers": n, "<measure>": mean over layers}`` with NaN left out (``None`` when all are NaN)."""
    if not reports:
        raise InvalidInputError("the rank report is empty: the model has no adapter layers")
    summary: dict[str, float | int | None] = {"layers": len(reports)}
    for name in _MEASURES:
        values = [v for v in (getattr(r, name) for r in reports) if not math.isnan(v)]
        summary[name] = float(np.mean(values)) if values else None
    return summary


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def rank_table(reports: Sequence[LayerRankReport]) -> Table:
    """Per-layer measures as a rich table, with a mean row."""
    table = Table(title=f"adapter rank report, {len(reports)} layers")
    columns = (
        "layer",
        "r main",
        "erank main",
        "eff main",
        "r sub",
        "erank sub",
        "eff sub",
        "grassmann",
        "sim",
    )
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rank_rows(reports):
        table.add_row(
            row["layer"], str(row["rank_main"]), _cell(row["erank_main"]), _cell(row["efficiency_main"]),
            str(row["rank_sub"]), _cell(row["erank_sub"]), _cell(row["efficiency_sub"]),
            _cell(row["grassmann_distance"]), _cell(row["similarity"]),
        )  # fmt: skip
    mean = rank_summary(reports)
    table.add_section()
    table.add_row(
        "mean", "", _cell(mean["erank_main"]), _cell(mean["efficiency_main"]), "", _cell(mean["erank_sub"]),
        _cell(mean["efficiency_sub"]), _cell(mean["grassmann_distance"]), _cell(mean["similarity"]),
        style="bold",
    )  # fmt: skip
    return table


def plot_rank_report(reports: Sequence[LayerRankReport], path: str | os.PathLike[str]) -> Path:
    """Effective rank per block, one line per module, main and sub side by side (dashed: the rank),
    rendered to PNG with the Agg canvas."""
    rows = [row for row in rank_rows(reports) if row["block"] is not None]
    if not rows:
        raise InvalidInputError("no adapter layer inside transformer blocks (blocks.<i>.*): nothing to plot")
    modules = list(dict.fromkeys(row["module"] for row in rows))
    figure = Figure(figsize=(11.0, 4.0), layout="constrained")
    for index, side in enumerate(("main", "sub")):
        axes = figure.add_subplot(1, 2, index + 1)
        for module in modules:
            points = [(r["block"], r[f"erank_{side}"]) for r in rows if r["module"] == module]
            blocks = [b for b, _ in points]
            values = [math.nan if v is None else v for _, v in points]
            axes.plot(blocks, values, marker="o", markersize=3, label=module)
        rank = max(r[f"rank_{side}"] for r in rows)
        if rank:
            axes.axhline(rank, color="grey", linestyle="--", linewidth=1, label=f"rank {rank}")
        axes.set_title(f"{side} adapter" if rank else f"{side} adapter (none)")
        axes.set_xlabel("block")
        axes.set_ylabel("effective rank")
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="small")
    with atomic_path(path) as tmp:
        FigureCanvasAgg(figure).print_png(tmp)
    return Path(path)


def write_rank_report(reports: Sequence[LayerRankReport], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``rank_report.parquet``, ``rank_report.csv`` (for DVC plots), ``rank_summary.json`` (DVC
    metrics, NaN as ``null``) and ``rank_report.png`` into ``folder``; returns their paths."""
    folder = Path(folder)
    table = pa.Table.from_pylist(rank_rows(reports), schema=RANK_SCHEMA)
    paths = {
        "parquet": folder / "rank_report.parquet",
        "csv": folder / "rank_report.csv",
        "summary": folder / "rank_summary.json",
    }
    with atomic_path(paths["parquet"]) as tmp:
        pq.write_table(table, tmp)
    with atomic_path(paths["csv"]) as tmp:
        pa_csv.write_csv(table, tmp)
    atomic_write_text(paths["summary"], json.dumps(rank_summary(reports), indent=2, allow_nan=False) + "\n")
    paths["plot"] = plot_rank_report(reports, folder / "rank_report.png")
    return paths
