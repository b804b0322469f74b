"""``python -m pipeline sweep``'s command (pipeline/cli.py registers it)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from pipeline.sweep import options as opt
from recyclelora.cli.common import user_errors
from recyclelora.errors import InvalidInputError


@opt.with_slurm_options
def sweep(
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "-S", "--set", help="KEY=V1,V2,...: params overrides; repeat; lists expand to the grid."
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="Stages to run (repeat); default: the whole pipeline."),
    ] = None,
    prefix: Annotated[str, typer.Option(help="Experiment names are <prefix>-<swept values>.")] = "sweep",
    executor: opt.Executor = opt.ExecutorName.queue,
    wait: opt.Wait = False,
    poll: Annotated[float, typer.Option(help="Seconds between progress checks (--wait).")] = 10.0,
    jobs: Annotated[int, typer.Option(help="Queue workers (--executor queue).")] = 1,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Resubmit the failed jobs of SLURM sweep --prefix only.")
    ] = False,
    status: Annotated[
        bool,
        typer.Option(
            "--status", help="Submit nothing: show SLURM sweep --prefix's jobs (with --wait, until all are back)."
        ),
    ] = False,
    *,
    slurm: opt.SlurmFactory,
) -> None:
    """Run a grid of params overrides as DVC experiments of the current commit, on DVC's queue or on SLURM."""
    from pipeline.sweep import run_queue, run_slurm
    from pipeline.sweep.grid import expand

    with user_errors():
        if retry_failed and executor != opt.ExecutorName.slurm:
            raise InvalidInputError("--retry-failed resubmits a SLURM sweep's failed jobs: add --executor slurm")
        if status and (executor != opt.ExecutorName.slurm or sets or retry_failed):
            raise InvalidInputError(
                "--status shows a SLURM sweep submitted before: use it with --executor slurm --prefix NAME only "
                "(no -S, no --retry-failed)"
            )
        if not sets and not retry_failed and not status:
            raise InvalidInputError(
                "no -S KEY=V1,V2 given: name the params to sweep, e.g. -S model.adapter.init=lora,rrqr"
            )
        experiments = expand(sets or [], prefix) if sets else []
        if executor == opt.ExecutorName.queue:
            run_queue(experiments, target or [], prefix, jobs, wait, poll, os.environ)
            return
        run_slurm(experiments, target or [], prefix, slurm(), wait, poll, os.environ, retry_failed, status)
