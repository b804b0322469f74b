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

The package, one module a job, each importing only those before it:
:mod:`~pipeline.compare.plan` (what to run) and :mod:`~pipeline.compare.results` (collecting ``dvc exp show`` rows
and per-image counts), :mod:`~pipeline.compare.stats` (differences with bootstrap intervals, curve points),
:mod:`~pipeline.compare.curve_record` (the curve's rows, kept across runs in ``<table>.json``),
:mod:`~pipeline.compare.render` (Markdown tables, charts), :mod:`~pipeline.compare.publish` (writing them, logging
them to MLflow), :mod:`~pipeline.compare.runner` (DVC's queue) and :mod:`~pipeline.compare.cli` (the commands).
This module re-exports their public names.
"""

from pipeline.compare.curve_record import (
    CurveRow,
    Score,
    grown,
    read_record,
    record_path,
    summarise,
    write_record,
)
from pipeline.compare.plan import (
    CURVE_METHODS,
    CURVE_STEPS,
    METHODS,
    REFERENCE,
    SEEDS,
    STEPS_KEY,
    TARGET_STAGES,
    budget_overrides,
    method_experiments,
    override_value,
    preset_overrides,
    queue_commands,
)
from pipeline.compare.publish import MLFLOW_EXPERIMENT, log_comparison, write_comparison, write_curve
from pipeline.compare.render import (
    ANALYSIS_NOTE,
    DIFFERENCE_NOTE,
    LABELS,
    analysis_cell,
    cell,
    curve_markdown,
    difference_cell,
    markdown_table,
    pipe_table,
    plot_curve,
    plot_differences,
    score_cell,
)
from pipeline.compare.results import (
    ANALYSIS_KEYS,
    FINISHED_STATES,
    IMAGE_TABLE,
    MEAN_KEY,
    MIOU_SUFFIX,
    NOT_TARGETS,
    PARAMS_KEY,
    PENDING_STATES,
    SECONDS_KEY,
    ImageCounts,
    Reader,
    collect,
    curve_experiments,
    experiments,
    finished,
    image_counts,
    method_of,
    read_dvc,
)
from pipeline.compare.runner import (
    commit,
    new_experiments,
    queue_experiments,
    run_queue,
    start_workers,
    wait_for,
    worker_env,
)
from pipeline.compare.stats import CurvePoint, compare_to_reference, curve_points, paired_counts

__all__ = [
    "ANALYSIS_KEYS",
    "ANALYSIS_NOTE",
    "CURVE_METHODS",
    "CURVE_STEPS",
    "DIFFERENCE_NOTE",
    "FINISHED_STATES",
    "IMAGE_TABLE",
    "LABELS",
    "MEAN_KEY",
    "METHODS",
    "MIOU_SUFFIX",
    "MLFLOW_EXPERIMENT",
    "NOT_TARGETS",
    "PARAMS_KEY",
    "PENDING_STATES",
    "REFERENCE",
    "SECONDS_KEY",
    "SEEDS",
    "STEPS_KEY",
    "TARGET_STAGES",
    "CurvePoint",
    "CurveRow",
    "ImageCounts",
    "Reader",
    "Score",
    "analysis_cell",
    "budget_overrides",
    "cell",
    "collect",
    "commit",
    "compare_to_reference",
    "curve_experiments",
    "curve_markdown",
    "curve_points",
    "difference_cell",
    "experiments",
    "finished",
    "grown",
    "image_counts",
    "log_comparison",
    "markdown_table",
    "method_experiments",
    "method_of",
    "new_experiments",
    "override_value",
    "paired_counts",
    "pipe_table",
    "plot_curve",
    "plot_differences",
    "preset_overrides",
    "queue_commands",
    "queue_experiments",
    "read_dvc",
    "read_record",
    "record_path",
    "run_queue",
    "score_cell",
    "start_workers",
    "summarise",
    "wait_for",
    "worker_env",
    "write_comparison",
    "write_curve",
    "write_record",
]
