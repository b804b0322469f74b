"""What one SLURM job of a sweep runs on its node: an experiment in its own clone of the commit, sent home.

The job clones the user's repository at the sweep's commit into its workspace (on the shared filesystem; a
requeued job finds it and carries on), points the clone at the user's DVC cache (``cache.dir``, ``cache.shared
group``: outputs and DVC's run cache are shared, so a stage another job already ran is restored, not rerun),
and runs ``dvc exp run -n <name> -S ... [targets]`` there. ``dvc exp push --no-cache <user repo> <name>`` then
sends the experiment's Git ref home (its outputs are already in the shared cache), and the workspace is
removed. The shared job runs ``dvc repro <shared stages>`` instead and pushes nothing. Each job records its
state in ``<sweep>/status/<name>.json`` (running, done or failed, with the SLURM job id and node); a failed
job keeps its workspace.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recyclelora.io import atomic_write_text

#: States of a status file; a job without one is still queued, a requeued one waits to run again.
RUNNING, DONE, FAILED, REQUEUED = "running", "done", "failed", "requeued"
#: DVC's lock files in a workspace. Only its job runs DVC there, so any it finds on starting are a killed run's:
#: DVC drops a stale entry only when no process has its PID, which a requeued job (a new PID namespace on some
#: clusters) may well reuse, and then it refuses to run ("... is busy, it is being blocked by: (PID ...)").
DVC_LOCKS = (".dvc/tmp/rwlock", ".dvc/tmp/rwlock.lock", ".dvc/tmp/lock")


@dataclass(frozen=True)
class Task:
    """One job: run ``name``'s experiment (or, with ``shared``, reproduce ``targets`` only) at ``rev``.

    ``repo`` is what the job clones and pushes its experiment to: the user's repository, or with ``fetch`` (the
    ref holding ``rev`` there) a Git remote's URL. ``processes``: training processes per node.

    ``shared_stages`` were reproduced by the shared job, which hands over ``carry`` (``dvc.lock`` and those
    stages' outputs DVC does not cache, which its run cache cannot restore either) in ``<sweep>/shared/``.
    """

    name: str
    overrides: tuple[str, ...]
    targets: tuple[str, ...]
    repo: str | Path
    rev: str
    cache: Path
    sweep: Path
    shared: bool = False
    shared_stages: tuple[str, ...] = ()
    carry: tuple[str, ...] = ()
    processes: int = 1
    fetch: str | None = None

    @property
    def workspace(self) -> Path:
        return self.sweep / "workspaces" / self.name

    @property
    def handover(self) -> Path:
        return self.sweep / "shared"

    @property
    def status(self) -> Path:
        return self.sweep / "status" / f"{self.name}.json"

    def command(self) -> list[str]:
        """``dvc repro`` of the shared stages, or ``dvc exp run`` of the experiment."""
        if self.shared:
            return ["dvc", "repro", *self.targets]
        sets = [arg for override in self.overrides for arg in ("-S", override)]
        return ["dvc", "exp", "run", "-n", self.name, *sets, *self.targets]


def read_status(path: Path) -> dict[str, Any] | None:
    """A job's status record, ``None`` before it starts (or while its file is being replaced)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_status(task: Task, state: str, **details: Any) -> None:
    record = {
        "state": state,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "node": socket.gethostname(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **details,
    }
    task.status.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(task.status, json.dumps(record, indent=1) + "\n")


def _run(command: list[str], cwd: Path) -> None:
    """Run ``command`` in ``cwd``, its output into the job's log; a RuntimeError with its tail if it fails."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    print(done.stdout, done.stderr, sep="\n", flush=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`{' '.join(command)}` exited {done.returncode}: {' / '.join(tail)}")


def copy_files(names: Iterable[str], source: Path, destination: Path) -> None:
    """Copy the files or folders ``names`` (relative paths) that exist under ``source`` to ``destination``."""
    for name in names:
        if (source / name).is_dir():
            shutil.copytree(source / name, destination / name, dirs_exist_ok=True)
        elif (source / name).exists():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, destination / name)


def prepare(task: Task) -> None:
    """Clone the commit into the workspace (once), share the user's DVC cache and take over what the shared job
    made: its ``dvc.lock`` and uncached outputs, and its stages' cached outputs (``dvc checkout``). A workspace
    already there (a requeued job's) only loses the DVC locks its killed run left (:data:`DVC_LOCKS`)."""
    if (task.workspace / ".git").is_dir():
        for name in DVC_LOCKS:
            (task.workspace / name).unlink(missing_ok=True)
        return
    shutil.rmtree(task.workspace, ignore_errors=True)  # a clone cut short
    task.workspace.parent.mkdir(parents=True, exist_ok=True)
    _run(["git", "clone", "-q", "--no-checkout", str(task.repo), str(task.workspace)], task.sweep)
    if task.fetch:  # a remote's commit may be on no branch: the sweep pushed it to this ref
        _run(["git", "fetch", "-q", "origin", task.fetch], task.workspace)
    _run(["git", "checkout", "-q", "--detach", task.rev], task.workspace)
    _run(["dvc", "config", "--local", "cache.dir", str(task.cache)], task.workspace)
    _run(["dvc", "config", "--local", "cache.shared", "group"], task.workspace)
    if task.shared_stages and not task.shared:
        copy_files(task.carry, task.handover, task.workspace)
        _run(["dvc", "checkout", *task.shared_stages], task.workspace)


def job_env(task: Task, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The stages' environment: ``environ`` (sbatch passes the submitter's) with the sweep's table tag
    (``RECYCLELORA_TABLE=<prefix>``), the training processes per node (:data:`~recyclelora.train.launch.NPROC_ENV`)
    and, unless set, the CPUs SLURM gave the job as threads, shared by those processes."""
    from pipeline.tracking import TABLE_ENV  # MLflow loads in the job only, not for `--help`
    from recyclelora.train.launch import NPROC_ENV

    env = {**environ, TABLE_ENV: task.sweep.name, NPROC_ENV: str(task.processes)}
    cpus = int(environ.get("SLURM_CPUS_PER_TASK", "1"))
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // task.processes)))
    return env


def _alive(group: int) -> bool:
    """Whether process group ``group`` has a process that is not a zombie (Linux's ``/proc``)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
            if int(fields[2]) == group and fields[0] != "Z":
                return True
    return False


class Job:
    """The callable submitit pickles for a job; on SLURM's signal before the end (preemption, time limit) it is
    requeued with the same task, and the rerun carries on in the same workspace."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.process: subprocess.Popen[str] | None = None

    def __call__(self) -> str | None:
        task = self.task
        if int(os.environ.get("SLURM_PROCID", "0")) > 0:
            # a job of several nodes runs this once per node: the first runs DVC, whose train stage starts the
            # training processes on every node (recyclelora.train.launch); the others have nothing to do
            return None
        write_status(task, RUNNING)
        try:
            prepare(task)
            self.process = subprocess.Popen(
                task.command(),
                cwd=task.workspace,
                env=job_env(task),
                text=True,
                process_group=0,  # with its stages: checkpoint() signals and awaits them all
            )
            if self.process.wait():
                raise RuntimeError(f"`{' '.join(task.command())}` exited {self.process.returncode}")
            if task.shared:
                copy_files(task.carry, task.workspace, task.handover)
            else:
                _run(["dvc", "exp", "push", "--no-cache", str(task.repo), task.name], task.workspace)
        except Exception as error:
            write_status(task, FAILED, error=str(error), workspace=str(task.workspace))
            raise
        shutil.rmtree(task.workspace)
        write_status(task, DONE)
        return task.name

    def checkpoint(self) -> Any:
        """Send SIGUSR2 to dvc and its stages (SLURM's notice reaches them too, not a ``scancel --signal`` to
        the batch shell): dvc and the other stages stop, the train stage checkpoints its step and exits. Wait for
        all of them, then hand submitit this job again to requeue; the rerun resumes in the same workspace."""
        from submitit.helpers import DelayedSubmission

        if self.process is not None:
            group = self.process.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGUSR2)
            # not Popen.wait: the interrupted __call__ holds its lock; the stages may outlive dvc by a checkpoint
            while _alive(group):
                time.sleep(0.5)
        write_status(self.task, REQUEUED)
        return DelayedSubmission(Job(self.task))
