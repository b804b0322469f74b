"""Running the plan on DVC's queue: refusing names already taken, queueing the experiments, the workers'
environment (their MLflow table tag and share of the cores), starting the workers (again when one dies) and
polling ``dvc exp show`` until nothing is queued or running. The SLURM executor is :mod:`pipeline.sweep`'s."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import typer
from dvc.exceptions import NotDvcRepoError

from pipeline.compare.plan import TARGET_STAGES, method_experiments
from pipeline.compare.results import PENDING_STATES, experiments
from pipeline.sweep import queue_command, require_mlflow_server
from pipeline.sweep.grid import Experiment
from pipeline.tracking import TABLE_ENV
from recyclelora.errors import InvalidInputError


def start_workers(jobs: int, env: Mapping[str, str]) -> None:
    """``dvc queue start --jobs N`` with ``env``: it starts those of workers 1..N that are not running, so calling
    it again restarts a worker that died (its file-based message queue can hand a worker a half-written message,
    treeverse/dvc#10428; seen here with two workers).

    Its output goes through a file and is then printed: the daemons it leaves behind would otherwise hold this
    process's stdout and stderr, and whoever reads them to the end (a pipe, ``| tee``, a test) would wait for the
    last worker to exit, long after the table is written (a worker can stay idle for hours).
    """
    with tempfile.TemporaryFile("w+") as log:
        try:
            subprocess.run(
                ["dvc", "queue", "start", "--jobs", str(jobs)],
                stdout=log, stderr=subprocess.STDOUT, env=dict(env), check=True,
            )  # fmt: skip
        finally:
            log.seek(0)
            typer.echo(log.read(), nl=False)


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


def new_experiments(
    methods: list[str], seeds: list[int], overrides: list[str], prefix: str
) -> list[Experiment]:
    """:func:`method_experiments`, refused if experiments ``<prefix>-...`` exist."""
    existing = sorted(row["Experiment"] for row in experiments(prefix))
    if existing:
        raise InvalidInputError(
            f"experiments {existing[:4]}... exist: remove them "
            f"(`dvc exp remove {' '.join(existing[:2])} ...`) "
            "or choose another --prefix"
        )
    return method_experiments(methods, seeds, overrides, prefix)


def queue_experiments(methods: list[str], seeds: list[int], overrides: list[str], prefix: str) -> None:
    """Queue :func:`new_experiments` (``dvc exp run --queue``), warning when params.yaml differs from HEAD."""
    queued = new_experiments(methods, seeds, overrides, prefix)
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


def commit(rev: str) -> str:
    """The commit of Git revision ``rev``; of ``HEAD``, the one experiments queued now are based on (commits made
    while they run do not move it)."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        check=False,
        capture_output=True,
        text=True,
    )
    if found.returncode:
        raise InvalidInputError(f"--rev {rev}: not a commit of this repository; pass a commit, branch or tag")
    return found.stdout.strip()
