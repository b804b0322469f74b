"""``--executor slurm``: one SLURM job per experiment through submitit, and the sweep's record on disk.

A sweep lives in ``<workdir>/<prefix>/``: ``sweep.json`` (its commit, targets, experiments and their job ids),
``submitit/`` (each job's pickles and logs, ``<job id>_0_log.out`` / ``.err``), ``status/<name>.json`` (what
:mod:`pipeline.sweep.job` records) and ``workspaces/<name>/`` (each job's clone, kept when it fails). With more
than one experiment and stages they all share (:func:`pipeline.sweep.grid.shared_stages`), a first job
``<prefix>-shared`` reproduces those stages and the experiments' jobs start after it succeeded
(``--dependency=afterok``): they restore them from DVC's run cache instead of computing them side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.sweep import progress, require_mlflow_server
from pipeline.sweep.grid import Experiment, shared_stages, uncached_outs
from pipeline.sweep.job import DONE, FAILED, RUNNING, Job, Task, read_status
from pipeline.sweep.progress import Row
from recyclelora.cli.common import errors
from recyclelora.errors import InvalidInputError, UserError, require_extra
from recyclelora.io import atomic_write_text
from recyclelora.validation import validate_fields

SWEEP_FILE = "sweep.json"
#: The lines of a job's log that say why it failed: a stage's one ``error:`` line and DVC's ``ERROR:`` lines.
_ERROR_LINE = re.compile(r"(?:error|ERROR): .+")
#: What SLURM writes into a job's log when it requeues the job: the lines before it are an earlier run's.
_REQUEUED = re.compile(r"DUE TO (?:JOB REQUEUE|PREEMPTION)")
_TAIL_BYTES = 64 * 1024
#: The SLURM time formats ``--time`` takes: minutes, H:MM:SS, D-H:MM:SS.
_TIME = re.compile(r"(?P<only>\d+)|(?:(?P<days>\d+)-)?(?P<hours>\d+):(?P<minutes>\d\d):(?P<seconds>\d\d)")
_SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")


def minutes(time: str) -> int:
    """SLURM's ``--time`` (``90``, ``1:30:00``, ``2-00:00:00``) in whole minutes, rounded up."""
    match = _TIME.fullmatch(time.strip())
    if not match:
        raise InvalidInputError(
            f"--time {time!r} is not minutes, H:MM:SS or D-H:MM:SS (SLURM's formats): e.g. 1:30:00"
        )
    parts = {key: int(value or 0) for key, value in match.groupdict().items()}
    total = ((parts["days"] * 24 + parts["hours"]) * 60 + parts["minutes"] + parts["only"]) * 60 + parts[
        "seconds"
    ]
    if total <= 0:
        raise InvalidInputError(f"--time {time!r} is no time at all: give the job's time limit, e.g. 1:30:00")
    return -(-total // 60)


def stderr_log(log: str | Path) -> Path:
    """The ``.err`` log submitit writes beside a job's ``.out`` log (the one ``sweep.json`` records)."""
    return Path(log).with_suffix(".err")


def said(log: str | Path, limit: int = 2) -> str:
    """`` (saying: <line> / <line>)``: the last ``limit`` error lines of a job's stderr log (the ``.err`` beside
    ``log``, its ``.out``) since SLURM last requeued it, so that a failure listing shows its cause; empty without
    a log or an error line."""
    try:
        with open(stderr_log(log), "rb") as handle:  # its end only: a long run's log is large
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - _TAIL_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    last_run = _REQUEUED.split(text)[-1]  # a requeued job's log holds the earlier runs' lines (a stop's) too
    lines = [line.strip() for line in last_run.splitlines() if _ERROR_LINE.fullmatch(line.strip())]
    return f" (saying: {' / '.join(lines[-limit:])})" if lines else ""


@dataclass(frozen=True)
class SlurmOptions:
    """What each job asks SLURM for, and where it works (validated when built: one line per bad value)."""

    partition: str | None = field(default=None, metadata={"help": "Partition (sbatch --partition)."})
    account: str | None = field(default=None, metadata={"help": "Account to charge (sbatch --account)."})
    qos: str | None = field(default=None, metadata={"help": "Quality of service (sbatch --qos)."})
    time: str = field(
        default="2:00:00", metadata={"help": "Time limit of each job: minutes, H:MM:SS, D-H:MM:SS."}
    )
    cpus_per_node: int = field(default=1, metadata={"help": "CPUs of each job.", "ge": 1})
    gpus_per_node: int = field(default=0, metadata={"help": "GPUs of each job.", "ge": 0})
    mem_gb: float | None = field(default=None, metadata={"help": "Memory of each job in GB.", "gt": 0})
    nodes: int = field(default=1, metadata={"help": "Nodes of each job.", "ge": 1})
    processes_per_node: int | None = field(
        default=None,
        metadata={"help": "Training processes per node (torchrun's); default: --gpus-per-node, or 1.", "ge": 1},
    )
    signal_delay_s: int = field(
        default=120,
        metadata={"help": "Seconds before the time limit SLURM sends USR2 to checkpoint.", "ge": 0},
    )
    max_requeues: int = field(
        default=3, metadata={"help": "Requeues after reaching the time limit.", "ge": 0}
    )
    sbatch: tuple[str, ...] = field(default=(), metadata={"help": "Other sbatch options, KEY=VALUE."})
    git_remote: str | None = field(
        default=None,
        metadata={
            "help": "Git remote (name or URL) the jobs clone the commit from and push their experiments to, for "
            "nodes that cannot see this repository; the sweep pulls the experiments home."
        },
    )
    workdir: str | None = field(
        default=None,
        metadata={"help": "Shared folder of the sweep's record, logs and workspaces; default: .dvc/tmp/slurm."},
    )

    def __post_init__(self) -> None:
        validate_fields(self, "slurm")
        for name in ("partition", "account", "qos"):
            value = getattr(self, name)
            if value is not None and (not value or re.search(r"\s", value)):
                raise InvalidInputError(f"--{name} {value!r} must be one name without spaces, e.g. --{name} gpu")
        if self.git_remote is not None and (not self.git_remote or re.search(r"\s", self.git_remote)):
            raise InvalidInputError(
                f"--git-remote {self.git_remote!r} must be a Git remote's name or URL, e.g. --git-remote origin"
            )
        minutes(self.time)
        self.extra()
        if self.processes > self.cpus_per_node:
            raise InvalidInputError(
                f"--processes-per-node {self.processes} exceeds --cpus-per-node {self.cpus_per_node}: each training "
                "process needs a CPU; ask for more CPUs or fewer processes"
            )

    @property
    def processes(self) -> int:
        """Training processes per node: :attr:`processes_per_node`, else one per GPU, else 1."""
        return self.processes_per_node or self.gpus_per_node or 1

    def extra(self) -> dict[str, str]:
        """``--sbatch`` options as submitit's additional parameters (``{"constraint": "a100"}``)."""
        extra = {}
        for option in self.sbatch:
            key, equals, value = option.removeprefix("--").partition("=")
            if not equals or not _SBATCH_KEY.fullmatch(key) or not value:
                raise InvalidInputError(
                    f"--sbatch {option!r} is not KEY=VALUE of an sbatch option: e.g. --sbatch constraint=a100"
                )
            extra[key] = value
        return extra

    def parameters(self, name: str, after: str | None) -> dict[str, Any]:
        """submitit's ``SlurmExecutor.update_parameters`` for the job ``name``, started after job ``after`` succeeded."""
        parameters = {
            "job_name": name,
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "time": minutes(self.time),
            "nodes": self.nodes,
            "ntasks_per_node": 1,
            "cpus_per_task": self.cpus_per_node,
            "gpus_per_node": self.gpus_per_node or None,
            "mem": f"{self.mem_gb}GB" if self.mem_gb else None,
            "signal_delay_s": self.signal_delay_s,
            "dependency": f"afterok:{after}" if after else None,
            # a job whose shared job failed leaves the queue (and can be retried) instead of pending forever
            "additional_parameters": self.extra() | ({"kill-on-invalid-dep": "yes"} if after else {}),
        }
        return {key: value for key, value in parameters.items() if value is not None}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def dvc_cache_dir(repo: Path) -> Path:
    """The user's DVC cache (``dvc cache dir``), which every job's clone uses."""
    done = subprocess.run(["dvc", "cache", "dir"], cwd=repo, check=True, capture_output=True, text=True)
    return Path(done.stdout.strip())


#: Where a sweep with a Git remote pushes its commit there for the jobs to fetch: ``<this>/<prefix>``.
SWEEP_REFS = "refs/recyclelora/sweeps"


def remote_url(repo: Path, remote: str) -> str:
    """The URL of ``repo``'s Git remote ``remote``, or ``remote`` itself when it is no remote's name (a URL)."""
    done = subprocess.run(["git", "remote", "get-url", remote], cwd=repo, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else remote


def queued_jobs() -> dict[str, str]:
    """``{job id: state}`` of the jobs in SLURM's queue (pending, running, requeued, completing)."""
    done = subprocess.run(["squeue", "-h", "-o", "%i %T"], check=True, capture_output=True, text=True)
    return dict(line.split() for line in done.stdout.splitlines() if line.strip())


class Sweep:
    """A SLURM sweep's folder and record: its commit, targets, shared stages, experiments and their jobs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.record: dict[str, Any] = json.loads((folder / SWEEP_FILE).read_text())

    @classmethod
    def create(cls, folder: Path, record: Mapping[str, Any]) -> Sweep:
        if (folder / SWEEP_FILE).exists():
            raise UserError(f"{folder} holds an earlier sweep: choose another --prefix, or --retry-failed it")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            folder / SWEEP_FILE, json.dumps({**record, "jobs": {}, "logs": {}}, indent=1) + "\n"
        )
        return cls(folder)

    @property
    def shared_name(self) -> str:
        return f"{self.folder.name}-shared"

    def names(self) -> list[str]:
        """The jobs' names: the shared one (when there is one), then the experiments'."""
        experiments = [experiment["name"] for experiment in self.record["experiments"]]
        return ([self.shared_name] if self.record["shared"] else []) + experiments

    def status(self, name: str) -> dict[str, Any]:
        """What the job ``name`` recorded last (``{}`` before it ran)."""
        return read_status(self.folder / "status" / f"{name}.json") or {}

    def rows(self) -> list[Row]:
        """Each job's state: done as it recorded, else queued or running while in SLURM's queue (read first: a
        job records its end before it leaves the queue), else failed (with its error, or gone without one)."""
        queued = queued_jobs()
        rows = []
        for name in self.names():
            job, log, status = self.record["jobs"][name], self.record["logs"][name], self.status(name)
            state = status.get("state")
            if state == DONE:
                rows.append(Row(name, progress.DONE, job, status["node"], log))
            elif job in queued:  # also a failed job that SLURM requeued (preemption)
                running = state == RUNNING and queued[job] == "RUNNING"
                rows.append(
                    Row(name, progress.RUNNING if running else progress.QUEUED, job, status.get("node", ""))
                )
            elif state == FAILED:
                kept = f"; workspace kept: {status['workspace']}"
                rows.append(Row(name, progress.FAILED, job, status["node"],
                                f"{status['error']}{said(log)}; log: {log}{kept}"))  # fmt: skip
            else:
                gone = "left SLURM's queue without finishing (cancelled, killed, or its shared job failed)"
                rows.append(
                    Row(name, progress.FAILED, job, status.get("node", ""), f"{gone}{said(log)}; log: {log}")
                )
        return rows

    def bring_home(self, repo: Path) -> list[str]:
        """Pull the finished experiments from the sweep's Git remote into ``repo`` (``dvc exp pull --no-cache``:
        their outputs are in the shared cache); none without a remote. The names pulled."""
        if not self.record.get("fetch"):
            return []
        done = [name for name in self.names() if name != self.shared_name and self.status(name).get("state") == DONE]
        if done:
            pull = ["dvc", "exp", "pull", "--no-cache", self.record["source"], *done]
            pulled = subprocess.run(pull, cwd=repo, capture_output=True, text=True, check=False)
            if pulled.returncode:
                raise UserError(
                    f"cannot pull the finished experiments from {self.record['source']} "
                    f"({' '.join(pulled.stderr.split())[-300:]}): run `{' '.join(pull)}` once it is reachable"
                )
        return done

    def submit(self, names: Sequence[str], options: SlurmOptions, repo: Path) -> None:
        """Submit the jobs ``names`` (the shared one first, the others after it when it is among them)."""
        submitit = require_extra("submitit", "cluster", "Sweeps on SLURM")
        executor = submitit.SlurmExecutor(
            folder=self.folder / "submitit", max_num_timeout=options.max_requeues
        )
        cache, record = dvc_cache_dir(repo), self.record
        after = None
        for experiment in [{"name": self.shared_name, "overrides": []}, *record["experiments"]]:
            name = experiment["name"]
            if name not in names:
                continue
            shared = name == self.shared_name
            targets = record["shared"] if shared else record["targets"]
            task = Task(
                name,
                tuple(experiment["overrides"]),
                tuple(targets),
                record.get("source", str(repo)),  # a sweep recorded before remotes: the repository
                record["rev"],
                cache,
                self.folder,
                shared,
                tuple(record["shared"]),
                tuple(record["carry"]),
                options.processes,
                record.get("fetch"),
            )
            executor.update_parameters(**options.parameters(name, after))
            job = executor.submit(Job(task))
            record["jobs"][name], record["logs"][name] = job.job_id, str(job.paths.stdout)
            after = job.job_id if shared else after
        atomic_write_text(self.folder / SWEEP_FILE, json.dumps(record, indent=1) + "\n")


def submit(
    experiments: Sequence[Experiment],
    targets: Sequence[str],
    options: SlurmOptions,
    repo: Path,
    folder: Path,
    environ: Mapping[str, str],
) -> Sweep:
    """Record a sweep of ``repo``'s HEAD in ``folder`` and submit its jobs: the shared one, when the
    experiments are several and share stages, then one per experiment."""
    require_mlflow_server("--executor slurm", environ)
    keys = sorted(
        {override.split("=", 1)[0] for experiment in experiments for override in experiment.overrides}
    )
    shared = shared_stages(repo / "dvc.yaml", keys, targets) if len(experiments) > 1 else []
    remote = options.git_remote and remote_url(repo, options.git_remote)
    record = {
        "rev": _git(repo, "rev-parse", "HEAD"),
        "source": remote or str(repo),
        "fetch": remote and f"{SWEEP_REFS}/{folder.name}",
        "targets": list(targets),
        "shared": shared,
        "carry": ["dvc.lock", *uncached_outs(repo / "dvc.yaml", shared)] if shared else [],
        "experiments": [{"name": e.name, "overrides": list(e.overrides)} for e in experiments],
    }
    if _git(repo, "status", "--porcelain", "--untracked-files=no"):
        errors.print(
            f"warning: uncommitted changes are not part of the sweep: its jobs run commit {record['rev'][:8]}; "
            "commit them first to include them",
            highlight=False,
            soft_wrap=True,
        )
    sweep = Sweep.create(folder, record)
    if remote:  # the nodes cannot see repo: they fetch the commit from the remote and push their experiments there
        pushed = subprocess.run(["git", "push", "-q", "--force", remote, f"{record['rev']}:{record['fetch']}"],
                                cwd=repo, capture_output=True, text=True, check=False)  # fmt: skip
        if pushed.returncode:
            shutil.rmtree(folder)
            raise UserError(
                f"cannot push the sweep's commit to --git-remote {remote}: {' '.join(pushed.stderr.split())[-300:]}"
            )
    sweep.submit(sweep.names(), options, repo)
    return sweep


def existing(folder: Path, what: str) -> Sweep:
    """The sweep recorded in ``folder``; FileNotFoundError when there is none to ``what`` (retry, show)."""
    if not (folder / SWEEP_FILE).exists():
        raise FileNotFoundError(f"{folder / SWEEP_FILE} does not exist: no SLURM sweep with this --prefix to {what}")
    return Sweep(folder)


def retry_failed(options: SlurmOptions, repo: Path, folder: Path, environ: Mapping[str, str]) -> Sweep:
    """Resubmit the jobs of the sweep in ``folder`` that are neither done nor in SLURM's queue (failed, or never
    ran because the shared job failed), each in a fresh workspace; finished experiments stay as they are."""
    require_mlflow_server("--executor slurm", environ)
    sweep = existing(folder, "retry")
    queued = queued_jobs()
    again = [
        name for name in sweep.names()
        if sweep.status(name).get("state") != DONE and sweep.record["jobs"].get(name) not in queued
    ]  # fmt: skip
    if not again:
        raise UserError(f"every job of {folder} is done or still in SLURM's queue: nothing to retry")
    for name in again:
        shutil.rmtree(folder / "workspaces" / name, ignore_errors=True)
        (folder / "status" / f"{name}.json").unlink(missing_ok=True)
    sweep.submit(again, options, repo)
    return sweep
