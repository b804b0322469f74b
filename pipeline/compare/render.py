"""Rendering: the methods' labels, the Markdown of the method table (mean ± std over seeds, trainable
parameters, the adapters' analysis), of the difference table and of the training-budget curve, with the notes
that say what they show, and their charts (matplotlib's Agg canvas, PNG). Pure functions of the scores and
differences, apart from writing a chart to the path it is given."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.compare.curve_record import CurveRow, Score
from pipeline.compare.plan import METHODS, REFERENCE
from pipeline.compare.results import NOT_TARGETS
from recyclelora.adapters.initialisers import INITIALISERS
from recyclelora.eval.bootstrap import BootstrapInterval
from recyclelora.io import atomic_path

LABELS: dict[str, str] = {"frozen": "Frozen backbone", "full": "Full fine-tuning"} | {
    name: entry.label for name, entry in INITIALISERS.items()
}


def _interval_bars(
    axes: Any, positions: Sequence[float], intervals: Sequence[BootstrapInterval], color: str
) -> None:
    """Error bars from each interval's low to its high bound, in percentage points (a percentile interval need
    not be centred on the observed difference)."""
    low, high = (np.array([100 * getattr(i, bound) for i in intervals]) for bound in ("low", "high"))
    axes.errorbar(positions, (low + high) / 2, yerr=(high - low) / 2, fmt="none", color=color, capsize=4)


def plot_differences(differences: Mapping[str, Mapping[str, BootstrapInterval]], path: Path) -> Path:
    """Bar chart (Agg canvas, PNG) of each method's mean-over-targets mIoU difference to RecycleLoRA in
    percentage points, with its 95 % bootstrap interval as the error bar."""
    methods = [m for m in METHODS if m in differences]
    means = [differences[m]["mean"] for m in methods]
    positions = np.arange(len(methods))
    figure = Figure(figsize=(max(6.0, 1.2 * len(methods)), 4.0), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(positions, [100 * i.difference for i in means], color="tab:blue")
    _interval_bars(axes, positions, means, "black")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(positions, [LABELS[m] for m in methods], rotation=30, ha="right")
    axes.set_ylabel("mIoU - RecycleLoRA's (pp), target mean")
    axes.set_title("95 % paired bootstrap intervals")
    with atomic_path(path) as tmp:
        FigureCanvasAgg(figure).print_png(tmp)
    return path


def score_cell(score: Score) -> str:
    """``mean ± std`` in percent, ``mean`` alone for one seed."""
    return f"{100 * score.mean:.1f}" + (f" ± {100 * score.std:.1f}" if score.std is not None else "")


def cell(values: Sequence[float]) -> str:
    """``mean ± std`` in percent (sample standard deviation), ``mean`` alone for one value."""
    return score_cell(Score.of(values))


#: What the difference table shows and what it does not.
DIFFERENCE_NOTE = (
    "mIoU of each method minus RecycleLoRA's, in percentage points, per target and for the mean over "
    "targets, with the 95 % percentile interval of a paired bootstrap (2000 resamples) that redraws the "
    "target images and the seeds, the same draws for both methods. The interval covers the variation over "
    "these images and these few seeds only, not other datasets, training budgets or real domain shifts; "
    "an interval that contains 0 does not show that the methods are equal."
)
#: What the analysis columns are.
ANALYSIS_NOTE = (
    "Rank efficiency: effective rank / rank of the trained updates B A (main / sub adapter); Grassmann "
    "distance between the column spaces of B_main and B_sub; both means over the adapted layers, then "
    "over seeds; `-` without such adapters."
)


def analysis_cell(per: Mapping[str, Sequence[float]], *keys: str) -> str:
    """The means over seeds of ``keys``' values, ``/``-separated, three decimals; ``-`` when all are missing."""
    means = [f"{statistics.fmean(per[key]):.3f}" for key in keys if per.get(key)]
    return " / ".join(means) or "-"


def difference_cell(interval: BootstrapInterval) -> str:
    """``difference [low, high]`` in percentage points."""
    return f"{100 * interval.difference:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"


def pipe_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub-flavoured Markdown table's lines: the header, its separator and one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_table(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    note: str,
    differences: Mapping[str, Mapping[str, BootstrapInterval]] | None = None,
    chart: str | None = None,
) -> str:
    """Methods (in :data:`METHODS` order) with their trainable parameters, mIoU in percent by target domain
    and their mean, rank efficiency and Grassmann distance; with ``differences``, a second table of their
    differences to RecycleLoRA and the ``chart`` image (a path relative to the table)."""
    targets = sorted({key for per in scores.values() for key in per if key not in NOT_TARGETS})
    columns = [*targets, "mean"]
    rows = []
    for method in (m for m in METHODS if m in scores):
        per = scores[method]
        seeds = max(len(values) for values in per.values())
        params = f"{max(per['params']) / 1e6:.2f} M" if per.get("params") else "-"
        rows.append(
            [LABELS[method], str(seeds), params]
            + [cell(per[c]) if per.get(c) else "-" for c in columns]
            + [
                analysis_cell(per, "efficiency_main", "efficiency_sub"),
                analysis_cell(per, "grassmann_distance"),
            ]
        )
    header = ["method", "seeds", "trainable params", *columns, "rank efficiency", "Grassmann distance"]
    lines = ["# Method comparison on the embedded benchmark", "", f"{note} {ANALYSIS_NOTE}", ""]
    lines += pipe_table(header, rows)
    if differences:
        compared = sorted({key for per in differences.values() for key in per} - {"mean"})
        columns = [*compared, "mean"]
        lines += ["", f"## Difference to {LABELS[REFERENCE]}", "", DIFFERENCE_NOTE, ""]
        rows = [[LABELS[m], *(difference_cell(per[c]) for c in columns)] for m, per in differences.items()]
        lines += pipe_table(["method", *columns], rows)
        if chart:
            lines += ["", f"![mIoU difference to {LABELS[REFERENCE]}, mean over targets]({chart})"]
    return "\n".join(lines) + "\n"


def _curve_methods(rows: Mapping[int, CurveRow]) -> list[str]:
    """The methods with a score at some budget, in :data:`METHODS` order."""
    return [m for m in METHODS if any(m in row.scores for row in rows.values())]


def curve_markdown(rows: Mapping[int, CurveRow], note: str, chart: str | None = None) -> str:
    """One row per budget: its seeds, each method's mean-over-targets mIoU (mean ± std over seeds, percent),
    each method's difference to RecycleLoRA with its interval, the mean training time of a run and where the
    row was measured."""
    methods = _curve_methods(rows)
    compared = [m for m in methods if m != REFERENCE]
    columns = [
        "steps",
        "seeds",
        *(LABELS[m] for m in methods),
        *(f"{LABELS[m]} - {LABELS[REFERENCE]}" for m in compared),
        "training s / run",
        "measured",
    ]
    cells = [
        [
            str(steps),
            str(row.seeds),
            *(score_cell(row.scores[m]) if m in row.scores else "-" for m in methods),
            *(difference_cell(row.differences[m]) if m in row.differences else "-" for m in compared),
            f"{row.seconds:.0f}" if row.seconds is not None else "-",
            row.source,
        ]
        for steps, row in rows.items()
    ]
    lines = ["# Training budget on the embedded benchmark", "", note, "", *pipe_table(columns, cells)]
    if chart:
        lines += ["", f"![mean mIoU and difference to {LABELS[REFERENCE]} by training steps]({chart})"]
    return "\n".join(lines) + "\n"


def plot_curve(rows: Mapping[int, CurveRow], path: Path) -> Path:
    """Two panels (Agg canvas, PNG) over the training steps (log axis): each method's mean-over-targets mIoU
    with the seeds' standard deviation, and each method's difference to RecycleLoRA with its 95 % interval."""
    figure = Figure(figsize=(10.0, 4.0), layout="constrained")
    scores_axes, difference_axes = figure.subplots(1, 2)
    for offset, method in enumerate(_curve_methods(rows)):
        scores = {steps: row.scores[method] for steps, row in rows.items() if method in row.scores}
        shifted = [s * 1.04**offset for s in scores]  # side by side: methods often overlap
        scores_axes.errorbar(
            shifted,
            [100 * score.mean for score in scores.values()],
            yerr=[100 * (score.std or 0.0) for score in scores.values()],
            marker="o",
            capsize=4,
            label=LABELS[method],
        )
        budgets = [s for s, row in rows.items() if method in row.differences]
        if budgets:
            intervals = [rows[s].differences[method] for s in budgets]
            line = difference_axes.plot(
                budgets, [100 * i.difference for i in intervals], marker="o", label=LABELS[method]
            )[0]
            _interval_bars(difference_axes, budgets, intervals, line.get_color())
    difference_axes.axhline(0, color="black", linewidth=0.8)
    for axes in (scores_axes, difference_axes):
        axes.set_xscale("log")
        axes.set_xticks(list(rows), [str(s) for s in rows])
        axes.minorticks_off()
        axes.set_xlabel("training steps")
        axes.legend()
    scores_axes.set_ylabel("mIoU (%), target mean; bars: std over seeds")
    difference_axes.set_ylabel(f"mIoU - {LABELS[REFERENCE]}'s (pp); bars: 95 % interval")
    with atomic_path(path) as tmp:
        FigureCanvasAgg(figure).print_png(tmp)
    return path
