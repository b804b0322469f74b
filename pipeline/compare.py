"""The comparison table: every method x seed as a queued DVC experiment, aggregated into a Markdown table.

    python -m pipeline.compare run                 # queue 8 methods x 3 seeds, run them, write the table
    python -m pipeline.compare queue               # only queue them; then `dvc queue start`, `dvc exp show`
    python -m pipeline.compare table               # aggregate finished experiments into docs/comparison.md
    python -m pipeline.compare curve               # LoRA and RecycleLoRA at 60, 200, 600 steps x 3 seeds

Each experiment is ``dvc exp run --queue -n <prefix>-<method>-s<seed> -S <preset keys> -S <method keys>
-S base.seed=<seed> evaluate analyze``: the preset (``presets/table.yaml``: shorter training on a CPU) and the
method are params overrides of the current workspace; ``export`` is not run. Data, weights and each
initialiser's decomposition are computed once and restored from DVC's run cache afterwards. The table reports,
per method and target domain, the mean and the sample standard deviation (n - 1) of mIoU over seeds, read from
each experiment's ``metrics/eval.json`` as ``dvc exp show`` reports it; the method is read back from the
experiment's params, not its name. Per method it adds the trainable parameters (``metrics/train.json``) and
the means over seeds of the adapters' rank efficiency and Grassmann distance (``metrics/analysis.json``).

A second table gives each method's mIoU minus RecycleLoRA's (``rrqr``), per target and for the mean over
targets, with a 95 % paired bootstrap interval over the target images and the seeds
(:mod:`recyclelora.eval.bootstrap`), from each experiment's ``reports/eval/per_image.parquet`` read from the
DVC cache at the experiment's commit; a bar chart of the mean-over-targets differences goes to
``<table folder>/img/<table name>.png``; table and chart are logged to the MLflow run ``compare-<prefix>``.

The training-budget curve (``curve``) runs the same experiments, named ``<prefix><steps>-<method>-s<seed>``,
at several values of ``train.iterations`` and writes, per budget, each method's mean-over-targets mIoU and its
difference to RecycleLoRA with the same interval (``docs/training-curve.md`` and its chart): the evidence for
the table's budget in ``presets/table.yaml``.
"""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import dvc.api
import mlflow
import numpy as np
import pyarrow.parquet as pq
import typer
from dvc.exceptions import NotDvcRepoError
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow import MlflowClient

from pipeline.presets import read_preset
from pipeline.sweep import options as opt
from pipeline.sweep import queue_command, require_mlflow_server, run_slurm
from pipeline.sweep.grid import Experiment
from pipeline.tracking import TABLE_ENV, TABLE_TAG, find_repo_root, get_or_create_experiment, tracking_uri
from recyclelora.adapters.initialisers import INITIALISERS
from recyclelora.cli.common import user_errors
from recyclelora.eval.bootstrap import BootstrapInterval, paired_bootstrap, paired_bootstrap_mean
from recyclelora.io import atomic_path, atomic_write_text

#: Params overrides of each method: the two backbone baselines (they keep the default init, unused), then every
#: adapter initialiser, the single-adapter baselines first.
METHODS: dict[str, dict[str, str]] = {
    "frozen": {"model.tuning": "frozen"},
    "full": {"model.tuning": "full"},
} | {
    name: {"model.tuning": "adapters", "model.adapter.init": name}
    for name in sorted(INITIALISERS, key=lambda name: INITIALISERS[name].layout != "single")
}
LABELS: dict[str, str] = {"frozen": "Frozen backbone", "full": "Full fine-tuning"} | {
    name: entry.label for name, entry in INITIALISERS.items()
}
SEEDS: tuple[int, ...] = (0, 1, 2)
TARGET_STAGES: tuple[str, ...] = ("evaluate", "analyze")
#: Keys of ``metrics/eval.json`` in a ``dvc exp show`` row: ``<target>.mIoU`` per target and their mean.
MIOU_SUFFIX = ".mIoU"
MEAN_KEY = "mean_mIoU"
#: Keys of ``metrics/train.json``: the run's trainable parameters (adapters or backbone, neck, head) and its
#: training wall time in seconds.
PARAMS_KEY = "trainable_parameters/total"
SECONDS_KEY = "seconds"
#: Keys of ``metrics/analysis.json`` (means over the adapted layers; absent without adapters).
ANALYSIS_KEYS = ("efficiency_main", "efficiency_sub", "grassmann_distance")
#: Names in :func:`collect`'s output that are not target domains.
NOT_TARGETS = frozenset({"mean", "params", "seconds", *ANALYSIS_KEYS})
#: The method every other one is compared with (RecycleLoRA), and the evaluate stage's per-image counts.
REFERENCE = "rrqr"
IMAGE_TABLE = "reports/eval/per_image.parquet"
#: The training-budget curve: its methods, budgets (``train.iterations``) and the param that sets them.
CURVE_METHODS: tuple[str, ...] = ("lora", REFERENCE)
CURVE_STEPS: tuple[int, ...] = (60, 200, 600)
STEPS_KEY = "train.iterations"
#: The MLflow experiment of the stages (``pipeline.tracking.stage_run``'s default).
MLFLOW_EXPERIMENT = "recyclelora"
PENDING_STATES = frozenset({"Queued", "Running"})
#: ``State`` of a finished experiment: ``Success`` while its queue entry lasts, then none.
FINISHED_STATES = frozenset({"Success", None})

app = typer.Typer(
    help="Queue, run and tabulate the method comparison (DVC experiments).", no_args_is_help=True
)


def override_value(value: Any) -> str:
    """A params value in the override syntax of ``dvc exp run -S`` (Hydra): ``null``, ``true``, ``1e-05``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(
        f"only scalar values can be passed to `dvc exp run -S`, got {value!r}: put it in params.yaml"
    )


def preset_overrides(preset: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` overrides for every leaf of a preset mapping (dotted keys)."""
    overrides = []
    for key, value in preset.items():
        if isinstance(value, Mapping):
            overrides += preset_overrides(value, f"{prefix}{key}.")
        else:
            overrides.append(f"{prefix}{key}={override_value(value)}")
    return overrides


def method_of(row: Mapping[str, Any]) -> str:
    """The method of a ``dvc exp show`` row (flat params): ``frozen``, ``full`` or the adapters' initialiser."""
    tuning = row["model.tuning"]
    return tuning if tuning != "adapters" else row["model.adapter.init"]


def method_experiments(
    methods: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], prefix: str
) -> list[Experiment]:
    """One experiment ``<prefix>-<method>-s<seed>`` per method and seed: ``overrides``, the method's, the seed."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {list(METHODS)}")
    return [
        Experiment(
            f"{prefix}-{method}-s{seed}",
            (*overrides, *(f"{k}={v}" for k, v in METHODS[method].items()), f"base.seed={seed}"),
        )
        for method in methods
        for seed in seeds
    ]


def queue_commands(
    methods: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], prefix: str
) -> list[list[str]]:
    """One ``dvc exp run --queue`` command per method and seed."""
    return [queue_command(e, TARGET_STAGES) for e in method_experiments(methods, seeds, overrides, prefix)]


def _named(pattern: str, rev: str) -> list[dict[str, Any]]:
    """``dvc exp show`` rows based on Git revision ``rev`` whose experiment name starts with regex ``pattern``."""
    start = re.compile(pattern)
    return [row for row in dvc.api.exp_show(revs=rev) if start.match(row.get("Experiment") or "")]


def experiments(prefix: str, rev: str = "HEAD") -> list[dict[str, Any]]:
    """``dvc exp show`` rows of the experiments named ``<prefix>-...`` based on Git revision ``rev``."""
    return _named(f"{re.escape(prefix)}-", rev)


def curve_experiments(prefix: str, rev: str = "HEAD") -> list[dict[str, Any]]:
    """``dvc exp show`` rows of the experiments named ``<prefix><steps>-...`` based on Git revision ``rev``."""
    return _named(rf"{re.escape(prefix)}\d+-", rev)


def finished(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of finished experiments (not queued, running or failed)."""
    return [row for row in rows if row.get("State") in FINISHED_STATES]


def collect(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{method: {target, "mean", "params", "seconds" or analysis key: [value of each finished experiment]}}``
    from ``dvc exp show``.

    A row holds its params and metrics flattened: ``<target>.mIoU`` and ``mean_mIoU`` come from
    ``metrics/eval.json`` (the only metrics file with such keys), targets losing their ``_val`` suffix;
    ``params`` and ``seconds`` are the trainable parameter count and training time of ``metrics/train.json``;
    :data:`ANALYSIS_KEYS` come from ``metrics/analysis.json``.
    """
    scores: dict[str, dict[str, list[float]]] = {}
    for row in finished(rows):
        per_method = scores.setdefault(method_of(row), {})
        for key, value in row.items():
            if key in (MEAN_KEY, PARAMS_KEY, SECONDS_KEY, *ANALYSIS_KEYS):
                name = {MEAN_KEY: "mean", PARAMS_KEY: "params", SECONDS_KEY: "seconds"}.get(key, key)
            elif key.endswith(MIOU_SUFFIX):
                name = key.removesuffix(MIOU_SUFFIX).removesuffix("_val")
            else:
                continue
            if isinstance(value, (int, float)):  # not None, nor "None": dvc exp show's rendering of a null
                per_method.setdefault(name, []).append(float(value))
    return scores


class ImageCounts(NamedTuple):
    """One target of a ``per_image.parquet``: its images and class ids (sorted) and their counts."""

    images: tuple[str, ...]
    classes: tuple[int, ...]
    counts: np.ndarray  # (images, classes, 3): TP, FP, FN


#: ``read(path, rev)``: the bytes of a DVC-tracked file at a Git revision.
Reader = Callable[[str, str], bytes]


def read_dvc(path: str, rev: str) -> bytes:
    """DVC-tracked ``path`` at Git revision ``rev`` (an experiment's commit), from the DVC cache."""
    return dvc.api.read(path, rev=rev, mode="rb")


def image_counts(data: bytes) -> dict[str, ImageCounts]:
    """``{target: counts}`` of a ``per_image.parquet`` (targets lose their ``_val`` suffix); a target must have
    exactly one row per image and class."""
    table = pq.read_table(io.BytesIO(data))
    columns = {name: np.asarray(values) for name, values in table.to_pydict().items()}
    targets = {}
    for dataset in sorted(set(columns["dataset"])):
        rows = columns["dataset"] == dataset
        images, image_index = np.unique(columns["image"][rows], return_inverse=True)
        classes, class_index = np.unique(columns["class_id"][rows], return_inverse=True)
        cells = image_index * len(classes) + class_index
        if rows.sum() != len(images) * len(classes) or len(np.unique(cells)) != rows.sum():
            raise ValueError(f"{IMAGE_TABLE}: {dataset} does not have exactly one row per image and class")
        counts = np.zeros((len(images), len(classes), 3), np.int64)
        counts[image_index, class_index] = np.stack([columns[key][rows] for key in ("tp", "fp", "fn")], -1)
        targets[dataset.removesuffix("_val")] = ImageCounts(
            tuple(images.tolist()), tuple(classes.tolist()), counts
        )
    return targets


def paired_counts(
    method: str,
    runs: Mapping[int, Mapping[str, ImageCounts]],
    reference: Mapping[int, Mapping[str, ImageCounts]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{target: (method's, RecycleLoRA's) (seeds, images, classes, 3) counts}`` joined on seed, image and
    class (ascending); a ``ValueError`` unless every run covers the same seeds, targets, images and classes."""
    seeds = sorted(reference)
    if sorted(runs) != seeds:
        raise ValueError(
            f"{method} has finished experiments for seeds {sorted(runs)} but {REFERENCE} for {seeds}: the "
            "paired bootstrap needs the same seeds"
        )
    expected = {target: counts[:2] for target, counts in reference[seeds[0]].items()}
    for name, per_seed in ((method, runs), (REFERENCE, reference)):
        for seed in seeds:
            found = {target: counts[:2] for target, counts in per_seed[seed].items()}
            if found != expected:
                raise ValueError(
                    f"{name} (seed {seed}) was evaluated on other targets, images or classes than {REFERENCE} "
                    f"(seed {seeds[0]}): {_mismatch(expected, found)}; compare experiments evaluated on the "
                    "same data"
                )
    return {
        target: (
            np.stack([runs[seed][target].counts for seed in seeds]),
            np.stack([reference[seed][target].counts for seed in seeds]),
        )
        for target in sorted(expected)
    }


def _mismatch(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> str:
    """The first difference between two ``{target: (images, classes)}``."""
    if set(found) != set(expected):
        return f"targets {sorted(found)} instead of {sorted(expected)}"
    target = next(target for target in sorted(expected) if found[target] != expected[target])
    (images, classes), (want_images, want_classes) = found[target], expected[target]
    if classes != want_classes:
        return f"{target} has classes {list(classes)} instead of {list(want_classes)}"
    missing, extra = sorted(set(want_images) - set(images)), sorted(set(images) - set(want_images))
    return f"{target} lacks images {missing[:3]} and has other images {extra[:3]}"


def compare_to_reference(
    rows: Sequence[Mapping[str, Any]], read: Reader = read_dvc
) -> dict[str, dict[str, BootstrapInterval]]:
    """``{method: {target or "mean": mIoU(method) - mIoU(RecycleLoRA)}}`` with 95 % paired bootstrap intervals.

    Each finished experiment's ``per_image.parquet`` is read with ``read(IMAGE_TABLE, row["rev"])`` (its
    commit) and paired with RecycleLoRA's of the same ``base.seed`` on (dataset, image, class_id). A target's
    difference is :func:`~recyclelora.eval.bootstrap.paired_bootstrap` over its images and the seeds; ``mean``
    is :func:`~recyclelora.eval.bootstrap.paired_bootstrap_mean`, the mean over targets of the differences,
    each resample drawing the images within each target and the seeds once for all targets (bootstrap seed
    0, 2000 resamples). Empty without a finished RecycleLoRA experiment.
    """
    done = finished(rows)
    if not any(method_of(row) == REFERENCE for row in done):
        return {}
    runs: dict[str, dict[int, dict[str, ImageCounts]]] = {}
    for row in done:
        per_seed = runs.setdefault(method_of(row), {})
        seed = int(row["base.seed"])
        if seed in per_seed:
            raise ValueError(
                f"two finished {method_of(row)} experiments have seed {seed} ({row['Experiment']}): remove one"
            )
        per_seed[seed] = image_counts(read(IMAGE_TABLE, row["rev"]))
    differences = {}
    for method in (m for m in METHODS if m in runs and m != REFERENCE):
        pairs = paired_counts(method, runs[method], runs[REFERENCE])
        differences[method] = {target: paired_bootstrap(*pair) for target, pair in pairs.items()}
        differences[method]["mean"] = paired_bootstrap_mean(list(pairs.values()))
    return differences


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


def cell(values: Sequence[float]) -> str:
    """``mean ± std`` in percent (sample standard deviation), ``mean`` alone for one value."""
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


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


class CurvePoint(NamedTuple):
    """One training budget of the curve: its finished experiments' :func:`collect` scores and
    :func:`compare_to_reference` differences."""

    scores: dict[str, dict[str, list[float]]]
    differences: dict[str, dict[str, BootstrapInterval]]


def curve_points(rows: Sequence[Mapping[str, Any]], read: Reader = read_dvc) -> dict[int, CurvePoint]:
    """``{steps: point}`` by increasing steps: the finished experiments grouped by their ``train.iterations``
    param (not their names)."""
    budgets: dict[int, list[Mapping[str, Any]]] = {}
    for row in finished(rows):
        budgets.setdefault(int(row[STEPS_KEY]), []).append(row)
    return {
        steps: CurvePoint(collect(group), compare_to_reference(group, read))
        for steps, group in sorted(budgets.items())
    }


def _curve_methods(points: Mapping[int, CurvePoint]) -> list[str]:
    """The methods with a finished experiment at some budget, in :data:`METHODS` order."""
    return [m for m in METHODS if any(m in point.scores for point in points.values())]


def curve_markdown(points: Mapping[int, CurvePoint], note: str, chart: str | None = None) -> str:
    """One row per budget: its seeds, each method's mean-over-targets mIoU (mean ± std over seeds, percent),
    each method's difference to RecycleLoRA with its interval, and the mean training time of a run."""
    methods = _curve_methods(points)
    compared = [m for m in methods if m != REFERENCE]
    columns = [
        "steps",
        "seeds",
        *(LABELS[m] for m in methods),
        *(f"{LABELS[m]} - {LABELS[REFERENCE]}" for m in compared),
        "training s / run",
    ]
    rows = []
    for steps, point in points.items():
        seeds = max(len(per.get("mean", [])) for per in point.scores.values())
        cells = [
            cell(point.scores[m]["mean"]) if point.scores.get(m, {}).get("mean") else "-" for m in methods
        ]
        cells += [
            difference_cell(point.differences[m]["mean"]) if m in point.differences else "-" for m in compared
        ]
        seconds = [value for per in point.scores.values() for value in per.get("seconds", [])]
        cells.append(f"{statistics.fmean(seconds):.0f}" if seconds else "-")
        rows.append([str(steps), str(seeds), *cells])
    lines = ["# Training budget on the embedded benchmark", "", note, "", *pipe_table(columns, rows)]
    if chart:
        lines += ["", f"![mean mIoU and difference to {LABELS[REFERENCE]} by training steps]({chart})"]
    return "\n".join(lines) + "\n"


def plot_curve(points: Mapping[int, CurvePoint], path: Path) -> Path:
    """Two panels (Agg canvas, PNG) over the training steps (log axis): each method's mean-over-targets mIoU
    with the seeds' standard deviation, and each method's difference to RecycleLoRA with its 95 % interval."""
    figure = Figure(figsize=(10.0, 4.0), layout="constrained")
    scores_axes, difference_axes = figure.subplots(1, 2)
    for offset, method in enumerate(_curve_methods(points)):
        budgets = [s for s, point in points.items() if point.scores.get(method, {}).get("mean")]
        values = [points[s].scores[method]["mean"] for s in budgets]
        spread = [100 * statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        means = [100 * statistics.fmean(v) for v in values]
        shifted = [s * 1.04**offset for s in budgets]  # side by side: methods often overlap
        scores_axes.errorbar(shifted, means, yerr=spread, marker="o", capsize=4, label=LABELS[method])
        budgets = [s for s, point in points.items() if method in point.differences]
        if budgets:
            intervals = [points[s].differences[method]["mean"] for s in budgets]
            line = difference_axes.plot(
                budgets, [100 * i.difference for i in intervals], marker="o", label=LABELS[method]
            )[0]
            _interval_bars(difference_axes, budgets, intervals, line.get_color())
    difference_axes.axhline(0, color="black", linewidth=0.8)
    for axes in (scores_axes, difference_axes):
        axes.set_xscale("log")
        axes.set_xticks(list(points), [str(s) for s in points])
        axes.minorticks_off()
        axes.set_xlabel("training steps")
        axes.legend()
    scores_axes.set_ylabel("mIoU (%), target mean; bars: std over seeds")
    difference_axes.set_ylabel(f"mIoU - {LABELS[REFERENCE]}'s (pp); bars: 95 % interval")
    with atomic_path(path) as tmp:
        FigureCanvasAgg(figure).print_png(tmp)
    return path


def write_curve(points: Mapping[int, CurvePoint], note: str, out: Path) -> list[Path]:
    """Write the curve's table to ``out`` and its chart to ``out.parent/img/<out.stem>.png``; return both."""
    chart = plot_curve(points, out.parent / "img" / f"{out.stem}.png")
    atomic_write_text(out, curve_markdown(points, note, chart.relative_to(out.parent).as_posix()))
    return [out, chart]


def start_workers(jobs: int, env: Mapping[str, str]) -> None:
    """``dvc queue start --jobs N`` with ``env``: it starts those of workers 1..N that are not running, so calling
    it again restarts a worker that died (its file-based message queue can hand a worker a half-written message,
    treeverse/dvc#10428; seen here with two workers)."""
    subprocess.run(["dvc", "queue", "start", "--jobs", str(jobs)], check=True, env=dict(env))


def wait_for(
    prefix: str, rev: str, poll_seconds: float, restart: Callable[[], object] | None = None, jobs: int = 1
) -> list[dict[str, Any]]:
    """Poll ``dvc exp show`` until no ``<prefix>-`` experiment is queued or running; return the rows. While some
    are queued and fewer than ``jobs`` run, call ``restart`` (e.g. :func:`start_workers`)."""
    while True:
        try:
            rows = experiments(prefix, rev)
        except (NotDvcRepoError, FileNotFoundError) as error:  # a finishing experiment vanished mid-read
            typer.echo(f"dvc exp show failed ({error}); retrying", err=True)
            time.sleep(poll_seconds)
            continue
        pending = [row["Experiment"] for row in rows if row.get("State") in PENDING_STATES]
        if not pending:
            return rows
        states = [row.get("State") for row in rows]
        if restart is not None and "Queued" in states and states.count("Running") < jobs:
            restart()
        typer.echo(f"{len(pending)} experiment(s) queued or running ({', '.join(pending[:3])}...)")
        time.sleep(poll_seconds)


def budget_overrides(preset: Path | None, steps: int | None = None) -> list[str]:
    """The ``-S`` overrides of ``preset`` (none without one), with ``train.iterations=steps`` if given."""
    values = read_preset(preset) if preset else {}
    if steps is not None:
        values["train"] = {**values.get("train", {}), "iterations": steps}
    return preset_overrides(values)


def _new_experiments(
    methods: list[str], seeds: list[int], overrides: list[str], prefix: str
) -> list[Experiment]:
    """:func:`method_experiments`, refused if experiments ``<prefix>-...`` exist."""
    existing = sorted(row["Experiment"] for row in experiments(prefix))
    if existing:
        raise ValueError(
            f"experiments {existing[:4]}... exist: remove them "
            f"(`dvc exp remove {' '.join(existing[:2])} ...`) "
            "or choose another --prefix"
        )
    return method_experiments(methods, seeds, overrides, prefix)


def _queue(methods: list[str], seeds: list[int], overrides: list[str], prefix: str) -> None:
    queued = _new_experiments(methods, seeds, overrides, prefix)
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], check=False).returncode:
        typer.echo(
            "warning: params.yaml differs from HEAD (an earlier `dvc exp run` leaves its params in the "
            "workspace): every queued experiment inherits the difference; `git checkout params.yaml` "
            "to avoid it",
            err=True,
        )
    for experiment in queued:
        subprocess.run(queue_command(experiment, TARGET_STAGES), check=True)


def worker_env(jobs: int, table: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The queue workers' environment: ``environ`` with ``RECYCLELORA_TABLE=<table>`` and, for several workers,
    an equal share of the cores each as ``OMP_NUM_THREADS`` (unless set): on the 2-core CPU, two one-thread
    workers trained 60 steps in 156-160 s each side by side, one two-thread worker in 154-222 s alone. Several
    workers need an MLflow server: SQLite locks up under concurrent writers."""
    env = {**environ, TABLE_ENV: table}
    if jobs > 1:
        require_mlflow_server(f"--jobs {jobs}", env)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def run_queue(prefixes: Sequence[str], rev: str, jobs: int, env: Mapping[str, str], poll: float) -> None:
    """Start ``jobs`` workers with ``env`` and wait for the experiments of each prefix, restarting dead workers."""
    restart = partial(start_workers, jobs, env)
    restart()
    for prefix in prefixes:
        wait_for(prefix, rev, poll, restart, jobs)


def head_commit() -> str:
    """The commit experiments queued now are based on (commits made while they run do not move it)."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _left_out(rows: Sequence[Mapping[str, Any]]) -> str:
    """`` Failed, left out: <names>.`` for the failed experiments of ``rows``, else ``""``."""
    failed = [row["Experiment"] for row in rows if row.get("State") == "Failed"]
    return f" Failed, left out: {', '.join(failed)}." if failed else ""


def _publish(prefix: str, rev: str, out: Path, files: Sequence[Path]) -> None:
    """Log ``files`` to MLflow (:func:`log_comparison`) and print the Markdown ``out`` and the run."""
    run_id = log_comparison(tracking_uri(find_repo_root(Path.cwd())), prefix, rev, files)
    typer.echo(out.read_text())
    typer.echo(f"{', '.join(map(str, files))} logged to MLflow run {run_id}")


def _table(prefix: str, rev: str, out: Path, preset: Path | None) -> None:
    rows = experiments(prefix, rev)
    scores = collect(rows)
    if not scores:
        raise ValueError(
            f"no finished experiment named {prefix}-... based on {rev}: run `python -m pipeline.compare run`, "
            "or pass the commit they were queued from as --rev"
        )
    note = (
        f"mIoU (%) on each target domain, mean ± sample standard deviation over seeds; params of "
        f"`params.yaml` with `{preset or 'no preset'}` (`python -m pipeline.compare run`)." + _left_out(rows)
    )
    _publish(prefix, rev, out, write_comparison(scores, compare_to_reference(rows), note, out))


def _curve(prefix: str, rev: str, out: Path, preset: Path | None) -> None:
    rows = curve_experiments(prefix, rev)
    points = curve_points(rows)
    if not points:
        raise ValueError(
            f"no finished experiment named {prefix}<steps>-... based on {rev}: run `python -m pipeline.compare "
            "curve`, or pass the commit they were queued from as --rev"
        )
    note = (
        f"Mean over the target domains of mIoU (%) after training for each number of steps (`{STEPS_KEY}`, the "
        "learning rate poly-decayed to 0 over each budget), mean ± sample standard deviation over seeds; each "
        f"method minus {LABELS[REFERENCE]} in percentage points with the 95 % paired bootstrap interval over "
        "the target images and the seeds (as in the method table; with one seed, over the images only); the mean "
        "training time of one run. Params "
        f"of `params.yaml` with `{preset or 'no preset'}` and the steps (`python -m pipeline.compare curve`)."
        + _left_out(rows)
    )
    _publish(prefix, rev, out, write_curve(points, note, out))


Methods = Annotated[
    list[str] | None, typer.Option("--method", help=f"Repeat; default: all of {list(METHODS)}.")
]
Seeds = Annotated[list[int] | None, typer.Option("--seed", help=f"Repeat; default: {list(SEEDS)}.")]
Preset = Annotated[Path | None, typer.Option(help="Params overrides for every experiment.")]
Prefix = Annotated[str, typer.Option(help="Experiment names are <prefix>-<method>-s<seed>.")]
Out = Annotated[Path, typer.Option(help="Markdown table to write.")]
Jobs = Annotated[
    int,
    typer.Option(help="Queue workers, each with cores / jobs threads (more than 1 needs an MLflow server)."),
]
Poll = Annotated[float, typer.Option(help="Seconds between progress checks.")]
Rev = Annotated[
    str, typer.Option(help="Git commit the experiments were queued from (`dvc exp show` baseline).")
]


@app.command()
def queue(
    method: Methods = None,
    seed: Seeds = None,
    preset: Preset = Path("presets/table.yaml"),
    prefix: Prefix = "cmp",
) -> None:
    """Queue one experiment per method and seed (start them with `dvc queue start`)."""
    with user_errors():
        _queue(method or list(METHODS), seed or list(SEEDS), budget_overrides(preset), prefix)


@app.command()
def run(
    method: Methods = None,
    seed: Seeds = None,
    preset: Preset = Path("presets/table.yaml"),
    prefix: Prefix = "cmp",
    out: Out = Path("docs/comparison.md"),
    jobs: Jobs = 1,
    poll: Poll = 30.0,
    executor: opt.Executor = opt.ExecutorName.queue,
    partition: opt.Partition = None,
    account: opt.Account = None,
    qos: opt.Qos = None,
    time: opt.Time = opt.DEFAULTS.time,
    cpus_per_node: opt.CpusPerNode = opt.DEFAULTS.cpus_per_node,
    gpus_per_node: opt.GpusPerNode = opt.DEFAULTS.gpus_per_node,
    mem_gb: opt.MemGb = None,
    nodes: opt.Nodes = opt.DEFAULTS.nodes,
    signal_delay_s: opt.SignalDelay = opt.DEFAULTS.signal_delay_s,
    max_requeues: opt.MaxRequeues = opt.DEFAULTS.max_requeues,
    sbatch: opt.Sbatch = None,
) -> None:
    """Queue, run (`dvc queue start`, or one SLURM job each with `--executor slurm`), wait, and write the table.

    The queue workers (SLURM jobs) inherit ``RECYCLELORA_TABLE=<prefix>``: the experiments' MLflow runs are
    tagged ``recyclelora.table=<prefix>`` (workers still busy with an earlier queue keep their own environment).
    With ``--jobs N`` each worker gets ``OMP_NUM_THREADS`` = cores / N."""
    with user_errors():
        rev = head_commit()
        methods, seeds, overrides = method or list(METHODS), seed or list(SEEDS), budget_overrides(preset)
        if executor == opt.ExecutorName.slurm:
            slurm = opt.slurm_options(
                partition,
                account,
                qos,
                time,
                cpus_per_node,
                gpus_per_node,
                mem_gb,
                nodes,
                signal_delay_s,
                max_requeues,
                sbatch,
            )
            run_slurm(
                _new_experiments(methods, seeds, overrides, prefix), TARGET_STAGES, prefix, slurm, True, poll
            )
        else:
            env = worker_env(jobs, prefix)
            _queue(methods, seeds, overrides, prefix)
            run_queue([prefix], rev, jobs, env, poll)
        _table(prefix, rev, out, preset)


@app.command()
def table(
    prefix: Prefix = "cmp",
    rev: Rev = "HEAD",
    out: Out = Path("docs/comparison.md"),
    preset: Preset = Path("presets/table.yaml"),
) -> None:
    """Aggregate the finished experiments into a Markdown table (mean ± std over seeds)."""
    with user_errors():
        _table(prefix, rev, out, preset)


@app.command()
def curve(
    method: Annotated[
        list[str] | None, typer.Option("--method", help=f"Repeat; default: {list(CURVE_METHODS)}.")
    ] = None,
    seed: Seeds = None,
    steps: Annotated[
        list[int] | None,
        typer.Option("--steps", help=f"Training budgets; repeat; default: {list(CURVE_STEPS)}."),
    ] = None,
    preset: Preset = Path("presets/table.yaml"),
    prefix: Annotated[
        str, typer.Option(help="Experiment names are <prefix><steps>-<method>-s<seed>.")
    ] = "curve",
    out: Out = Path("docs/training-curve.md"),
    table_only: Annotated[
        bool, typer.Option("--table-only", help="Only tabulate the finished experiments based on --rev.")
    ] = False,
    rev: Rev = "HEAD",
    jobs: Jobs = 1,
    poll: Poll = 30.0,
    executor: opt.Executor = opt.ExecutorName.queue,
    partition: opt.Partition = None,
    account: opt.Account = None,
    qos: opt.Qos = None,
    time: opt.Time = opt.DEFAULTS.time,
    cpus_per_node: opt.CpusPerNode = opt.DEFAULTS.cpus_per_node,
    gpus_per_node: opt.GpusPerNode = opt.DEFAULTS.gpus_per_node,
    mem_gb: opt.MemGb = None,
    nodes: opt.Nodes = opt.DEFAULTS.nodes,
    signal_delay_s: opt.SignalDelay = opt.DEFAULTS.signal_delay_s,
    max_requeues: opt.MaxRequeues = opt.DEFAULTS.max_requeues,
    sbatch: opt.Sbatch = None,
) -> None:
    """How the methods' scores and their difference to RecycleLoRA grow with training: queue every method x
    seed at each budget (the preset with `train.iterations` = steps), run them (on DVC's queue, or one SLURM
    job each as the SLURM sweep <prefix>), and write the curve."""
    with user_errors():
        if not table_only:
            rev = head_commit()
            budgets = [int(s) for s in steps or CURVE_STEPS]
            methods, seeds = method or list(CURVE_METHODS), seed or list(SEEDS)
            if executor == opt.ExecutorName.slurm:
                slurm = opt.slurm_options(
                    partition,
                    account,
                    qos,
                    time,
                    cpus_per_node,
                    gpus_per_node,
                    mem_gb,
                    nodes,
                    signal_delay_s,
                    max_requeues,
                    sbatch,
                )
                points = [
                    experiment
                    for budget in budgets
                    for experiment in _new_experiments(
                        methods, seeds, budget_overrides(preset, budget), f"{prefix}{budget}"
                    )
                ]
                run_slurm(points, TARGET_STAGES, prefix, slurm, True, poll)
            else:
                env = worker_env(jobs, prefix)
                for budget in budgets:
                    _queue(methods, seeds, budget_overrides(preset, budget), f"{prefix}{budget}")
                run_queue([f"{prefix}{budget}" for budget in budgets], rev, jobs, env, poll)
        _curve(prefix, rev, out, preset)


if __name__ == "__main__":
    app()
