"""``python -m pipeline sweep``: a grid of params overrides run as DVC experiments of the current commit.

    python -m pipeline sweep -S model.adapter.init=lora,rrqr -S base.seed=0,1 --wait              # DVC's queue
    python -m pipeline sweep -S model.adapter.init=lora,rrqr --executor slurm --partition gpu --wait

``--executor queue`` queues ``dvc exp run --queue -n <name> -S ...`` per point and starts DVC's queue workers on
this machine. ``--executor slurm`` submits one SLURM job per point through submitit
(:mod:`pipeline.sweep.slurm`), each in its own clone of the commit sharing the user's DVC cache
(:mod:`pipeline.sweep.job`); each finished experiment is pushed home as an ordinary DVC experiment
(``dvc exp show``, ``dvc exp apply``). Either way ``--wait`` shows each job's state until all are back
(:mod:`pipeline.sweep.progress`) and fails listing the failed ones with their logs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.sweep import progress
from pipeline.sweep.grid import Experiment
from pipeline.sweep.progress import Row
from recyclelora.errors import InvalidInputError

#: The sweeps' folder in the repository: DVC ignores ``.dvc/tmp``, and Git too.
SWEEPS_DIR = Path(".dvc", "tmp", "slurm")
_QUEUE_STATES = {"Queued": progress.QUEUED, "Running": progress.RUNNING, "Failed": progress.FAILED}


def require_mlflow_server(what: str, environ: Mapping[str, str]) -> None:
    """Refuse ``what`` (experiments side by side) unless ``MLFLOW_TRACKING_URI`` is an http(s) MLflow server:
    SQLite locks up under concurrent writers."""
    if urlparse(environ.get("MLFLOW_TRACKING_URI", "")).scheme not in ("http", "https"):
        raise InvalidInputError(
            f"{what} runs experiments side by side, which needs an MLflow server: start `mlflow server "
            "--backend-store-uri sqlite:///$PWD/mlflow.db --host 0.0.0.0 --port 5000` and export "
            "MLFLOW_TRACKING_URI=http://<its host>:5000"
        )


def queue_command(experiment: Experiment, targets: Sequence[str]) -> list[str]:
    """``dvc exp run --queue -n <name> -S <override> ... [targets]``."""
    sets = [arg for override in experiment.overrides for arg in ("-S", override)]
    return ["dvc", "exp", "run", "--queue", "-n", experiment.name, *sets, *targets]


def queue_rows(prefix: str, rev: str, restart: Any, jobs: int) -> list[Row]:
    """The ``<prefix>-`` experiments of ``dvc exp show`` as rows; restarts dead queue workers (``restart()``)
    while some wait and fewer than ``jobs`` run, as :func:`pipeline.compare.runner.wait_for` does."""
    from pipeline.compare.results import experiments

    shown = experiments(prefix, rev)
    states = [row.get("State") for row in shown]
    if "Queued" in states and states.count("Running") < jobs:
        restart()
    return [
        Row(
            row["Experiment"],
            _QUEUE_STATES.get(row.get("State"), progress.DONE),
            detail=f"`dvc queue logs {row['Experiment']}`" if row.get("State") == "Failed" else "",
        )
        for row in shown
    ]


def run_queue(
    experiments: Sequence[Experiment],
    targets: Sequence[str],
    prefix: str,
    jobs: int,
    wait: bool,
    poll: float,
    environ: Mapping[str, str],
) -> None:
    """Queue the experiments, start ``jobs`` DVC queue workers and, with ``wait``, watch them."""
    from pipeline.compare.runner import commit, start_workers, worker_env

    env = worker_env(jobs, prefix, environ)
    rev = commit("HEAD")
    for experiment in experiments:
        subprocess.run(queue_command(experiment, targets), check=True)
    restart = partial(start_workers, jobs, env)
    restart()
    if wait:
        progress.watch(
            partial(queue_rows, prefix, rev, restart, jobs), poll, "see their logs, then rerun them"
        )


def run_slurm(
    experiments: Sequence[Experiment],
    targets: Sequence[str],
    prefix: str,
    options: Any,
    wait: bool,
    poll: float,
    environ: Mapping[str, str] = os.environ,
    retry_failed: bool = False,
    status: bool = False,
) -> None:
    """Submit the SLURM sweep ``prefix`` of the repository in the working directory (or, with
    ``retry_failed``, its failed jobs) and, with ``wait``, watch it. With ``status`` submit nothing: show the
    sweep's jobs once, or watch them with ``wait``."""
    from pipeline.sweep import slurm

    repo = Path.cwd()
    folder = (Path(options.workdir).resolve() if options.workdir else repo / SWEEPS_DIR) / prefix
    if status:
        sweep = slurm.existing(folder, "show")
    elif retry_failed:
        sweep = slurm.retry_failed(options, repo, folder, environ)
    else:
        sweep = slurm.submit(experiments, targets, options, repo, folder, environ)
    if not status:
        jobs = ", ".join(f"{name} {sweep.record['jobs'][name]}" for name in sweep.names())
        progress.console.print(f"submitted to SLURM ({folder}): {jobs}", highlight=False, soft_wrap=True)
    try:
        if wait:
            retry = f"fix them, then `python -m pipeline sweep --executor slurm --retry-failed --prefix {prefix}`"
            progress.watch(sweep.rows, poll, retry)
        elif status:
            progress.show(sweep.rows())
    finally:
        if wait or status:
            home = sweep.bring_home(repo)
            if home:
                progress.console.print(f"pulled from {sweep.record['source']}: {', '.join(home)}", highlight=False)
