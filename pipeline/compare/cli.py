"""The command line, ``python -m pipeline.compare run | queue | table | curve``: the Typer app, its options and
commands, each turning the options into a plan, running it (:mod:`~pipeline.compare.runner`, or SLURM through
:mod:`pipeline.sweep`), then collecting, comparing, writing and logging the table or curve, and printing it;
user errors become one ``error:`` line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.compare.curve_record import grown, record_path, summarise
from pipeline.compare.plan import (
    CURVE_METHODS,
    CURVE_STEPS,
    METHODS,
    REFERENCE,
    SEEDS,
    STEPS_KEY,
    TARGET_STAGES,
    budget_overrides,
)
from pipeline.compare.publish import log_comparison, write_comparison, write_curve
from pipeline.compare.render import LABELS
from pipeline.compare.results import collect, curve_experiments, experiments
from pipeline.compare.runner import commit, new_experiments, queue_experiments, run_queue, worker_env
from pipeline.compare.stats import compare_to_reference, curve_points
from pipeline.sweep import options as opt
from pipeline.sweep import run_slurm
from pipeline.tracking import find_repo_root, tracking_uri
from recyclelora.cli.common import user_errors
from recyclelora.errors import InvalidInputError

app = typer.Typer(
    help="Queue, run and tabulate the method comparison (DVC experiments).", no_args_is_help=True
)


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
        raise InvalidInputError(
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
    measured = {
        steps: summarise(point, f"experiments of {commit(rev)[:7]}")
        for steps, point in curve_points(rows).items()
    }
    if not measured:
        raise InvalidInputError(
            f"no finished experiment named {prefix}<steps>-... based on {rev}: run `python -m pipeline.compare "
            "curve`, or pass the commit they were queued from as --rev"
        )
    record = record_path(out)
    curve = grown(record, measured)
    note = (
        f"Mean over the target domains of mIoU (%) after training for each number of steps (`{STEPS_KEY}`, the "
        "learning rate poly-decayed to 0 over each budget), mean ± sample standard deviation over seeds; each "
        f"method minus {LABELS[REFERENCE]} in percentage points with the 95 % paired bootstrap interval over "
        "the target images and the seeds (as in the method table; with one seed, over the images only); the mean "
        "training time of one run; the commit the row's experiments were based on. Params "
        f"of `params.yaml` with `{preset or 'no preset'}` and the steps (`python -m pipeline.compare curve`). "
        f"A run of some budgets replaces their rows; the others are kept from `{record.name}`."
        + _left_out(rows)
    )
    _publish(prefix, rev, out, write_curve(curve, note, out))


Methods = Annotated[
    list[str] | None, typer.Option("--method", help=f"Repeat; default: all of {list(METHODS)}.")
]
Seeds = Annotated[list[int] | None, typer.Option("--seed", help=f"Repeat; default: {list(SEEDS)}.")]


def _preset(value: Path | None) -> Path | None:
    """``--preset none``: no overrides, params.yaml as committed (a paper setting's own budget)."""
    return None if value is not None and value.as_posix() == "none" else value


Preset = Annotated[
    Path | None,
    typer.Option(
        help="Params overrides for every experiment; none: params.yaml as committed (a paper preset).",
        callback=_preset,
    ),
]
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
        queue_experiments(method or list(METHODS), seed or list(SEEDS), budget_overrides(preset), prefix)


@app.command()
@opt.with_slurm_options
def run(
    method: Methods = None,
    seed: Seeds = None,
    preset: Preset = Path("presets/table.yaml"),
    prefix: Prefix = "cmp",
    out: Out = Path("docs/comparison.md"),
    jobs: Jobs = 1,
    poll: Poll = 30.0,
    executor: opt.Executor = opt.ExecutorName.queue,
    *,
    slurm: opt.SlurmFactory,
) -> None:
    """Queue, run (`dvc queue start`, or one SLURM job each with `--executor slurm`), wait, and write the table.

    The queue workers (SLURM jobs) inherit ``RECYCLELORA_TABLE=<prefix>``: the experiments' MLflow runs are
    tagged ``recyclelora.table=<prefix>`` (workers still busy with an earlier queue keep their own environment).
    With ``--jobs N`` each worker gets ``OMP_NUM_THREADS`` = cores / N."""
    with user_errors():
        rev = commit("HEAD")
        methods, seeds, overrides = method or list(METHODS), seed or list(SEEDS), budget_overrides(preset)
        if executor == opt.ExecutorName.slurm:
            slurm_options = slurm()
            run_slurm(
                new_experiments(methods, seeds, overrides, prefix),
                TARGET_STAGES,
                prefix,
                slurm_options,
                True,
                poll,
            )
        else:
            env = worker_env(jobs, prefix)
            queue_experiments(methods, seeds, overrides, prefix)
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
@opt.with_slurm_options
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
    *,
    slurm: opt.SlurmFactory,
) -> None:
    """How the methods' scores and their difference to RecycleLoRA grow with training: queue every method x
    seed at each budget (the preset with `train.iterations` = steps), run them (on DVC's queue, or one SLURM
    job each as the SLURM sweep <prefix>), and write the curve."""
    with user_errors():
        if not table_only:
            rev = commit("HEAD")
            budgets = [int(s) for s in steps or CURVE_STEPS]
            methods, seeds = method or list(CURVE_METHODS), seed or list(SEEDS)
            if executor == opt.ExecutorName.slurm:
                slurm_options = slurm()
                points = [
                    experiment
                    for budget in budgets
                    for experiment in new_experiments(
                        methods, seeds, budget_overrides(preset, budget), f"{prefix}{budget}"
                    )
                ]
                run_slurm(points, TARGET_STAGES, prefix, slurm_options, True, poll)
            else:
                env = worker_env(jobs, prefix)
                for budget in budgets:
                    queue_experiments(methods, seeds, budget_overrides(preset, budget), f"{prefix}{budget}")
                run_queue([f"{prefix}{budget}" for budget in budgets], rev, jobs, env, poll)
        _curve(prefix, rev, out, preset)
