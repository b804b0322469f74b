"""``python -m pipeline sweep`` without a scheduler: the grid of ``-S`` options, the stages a sweep shares, the
SLURM options' validation and the refusals, each one line. The SLURM runs are in tests/cluster/."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sweep import options as opt
from pipeline.sweep import require_mlflow_server
from pipeline.sweep.grid import Experiment, expand, shared_stages, uncached_outs
from pipeline.sweep.job import DONE, FAILED, REQUEUED, RUNNING, Job, Task, job_env, prepare, write_status
from pipeline.sweep.progress import SweepFailed, watch
from pipeline.sweep.slurm import SlurmOptions, Sweep, minutes, said, submit
from recyclelora.errors import UserError
from recyclelora.train.launch import NPROC_ENV, processes_per_node

PROJECT = Path(__file__).resolve().parents[2]
DVC_YAML = PROJECT / "dvc.yaml"


def test_comma_lists_expand_to_the_cross_product_named_by_the_swept_values() -> None:
    grid = expand(["model.adapter.init=lora,rrqr", "train.iterations=4", "base.seed=0,1"], "sw")
    assert grid == [
        Experiment("sw-lora-0", ("model.adapter.init=lora", "train.iterations=4", "base.seed=0")),
        Experiment("sw-lora-1", ("model.adapter.init=lora", "train.iterations=4", "base.seed=1")),
        Experiment("sw-rrqr-0", ("model.adapter.init=rrqr", "train.iterations=4", "base.seed=0")),
        Experiment("sw-rrqr-1", ("model.adapter.init=rrqr", "train.iterations=4", "base.seed=1")),
    ]
    assert expand(["train.lr=1e-4"], "one") == [Experiment("one", ("train.lr=1e-4",))]
    assert [e.name for e in expand(["train.lr=1e-4,2e-4/x"], "sw")] == ["sw-1e-4", "sw-2e-4_x"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.lr"], "is not KEY=VALUE or KEY=V1,V2"),
        (["=1,2"], "is not KEY=VALUE or KEY=V1,V2"),
        (["train.lr=1,,2"], "is not KEY=VALUE or KEY=V1,V2"),
        (["base.seed=0,1", "base.seed=2"], "sets ['base.seed'] more than once"),
        (["train.lr=a/b,a_b"], "the same experiment name twice"),
    ],
)
def test_bad_sets_are_refused_in_one_line(sets: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]+$") as caught:
        expand(sets, "sw")
    assert message in str(caught.value)


def test_shared_stages_are_those_no_swept_key_reaches_upstream_or_in_their_params() -> None:
    assert shared_stages(DVC_YAML, ["model.adapter.init"]) == ["data", "weights"]
    assert shared_stages(DVC_YAML, ["train.lr", "base.seed"], ["evaluate", "analyze"]) == [
        "data",
        "weights",
        "init",
    ]
    assert shared_stages(DVC_YAML, ["model"]) == ["data"]  # a key holding a stage's param changes it
    assert shared_stages(DVC_YAML, ["params.yaml:datasets.synth.width"]) == ["weights", "init"]
    assert shared_stages(DVC_YAML, ["train.lr"], ["weights"]) == ["weights"]  # only what the targets need
    assert uncached_outs(DVC_YAML, ["data", "weights"]) == ["checksums/gta5.sha256"]


def test_sweep_and_compare_take_the_slurm_options_from_one_definition_built_only_when_asked() -> None:
    from pipeline.compare.cli import curve, run
    from pipeline.sweep.command import sweep

    fields = list(SlurmOptions.__dataclass_fields__)
    for command in (sweep, run, curve):
        assert list(inspect.signature(command).parameters)[-len(fields) :] == fields  # last, in --help too
    built = []

    @opt.with_slurm_options
    def command(*, slurm: opt.SlurmFactory) -> None:
        built.append(slurm)

    defaults = {name: p.default for name, p in inspect.signature(command).parameters.items()}
    # a bad value is refused only when the command asks for the options (it runs on SLURM)
    command(**defaults | {"partition": "gpu", "time": "bogus", "sbatch": ["constraint=a100"]})
    with pytest.raises(ValueError, match="--time 'bogus'"):
        built[0]()
    command(**defaults | {"partition": "gpu", "sbatch": ["constraint=a100"]})
    assert built[1]() == SlurmOptions(partition="gpu", sbatch=("constraint=a100",))


def test_slurm_options_are_validated_one_line_each() -> None:
    options = SlurmOptions(
        partition="gpu", time="1:30:00", cpus_per_node=2, gpus_per_node=2, mem_gb=32, sbatch=("constraint=a100",)
    )
    parameters = options.parameters("sw-lora", "41")
    assert parameters["time"] == 90 and parameters["mem"] == "32GB" and parameters["gpus_per_node"] == 2
    assert parameters["dependency"] == "afterok:41"
    assert parameters["additional_parameters"] == {"constraint": "a100", "kill-on-invalid-dep": "yes"}
    assert "account" not in parameters and "dependency" not in SlurmOptions().parameters("x", None)
    assert [minutes(t) for t in ("90", "1:30:00", "2-00:00:00", "0:00:30", "1-2:03:00")] == [
        90,
        90,
        2880,
        1,
        1563,
    ]
    for kwargs, message in [
        ({"time": "1:30"}, "--time '1:30' is not minutes, H:MM:SS or D-H:MM:SS"),
        ({"time": "0"}, "no time at all"),
        ({"time": "2-12"}, "--time '2-12' is not minutes, H:MM:SS or D-H:MM:SS"),
        ({"cpus_per_node": 0}, "slurm.cpus_per_node must be"),
        ({"nodes": 0}, "slurm.nodes must be"),
        ({"processes_per_node": 0}, "slurm.processes_per_node must be"),
        ({"gpus_per_node": 4}, "--processes-per-node 4 exceeds --cpus-per-node 1"),
        ({"partition": "a b"}, "--partition 'a b' must be one name"),
        ({"sbatch": ("constraint",)}, "--sbatch 'constraint' is not KEY=VALUE"),
    ]:
        with pytest.raises(ValueError, match=r"^[^\n]+$") as caught:
            SlurmOptions(**kwargs)
        assert message in str(caught.value), kwargs


def test_jobs_tag_their_runs_with_the_sweep_and_take_slurms_cpus(tmp_path: Path) -> None:
    task = Task("sw-lora", (), (), tmp_path, "HEAD", tmp_path, tmp_path / "sw")
    env = job_env(task, {"SLURM_CPUS_PER_TASK": "4", "PATH": "/bin"})
    assert env == {
        "SLURM_CPUS_PER_TASK": "4",
        "PATH": "/bin",
        "RECYCLELORA_TABLE": "sw",
        NPROC_ENV: "1",
        "OMP_NUM_THREADS": "4",
    }
    assert job_env(task, {"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"
    assert task.command() == ["dvc", "exp", "run", "-n", "sw-lora"]


def test_a_job_of_several_processes_starts_them_sharing_its_cpus(tmp_path: Path) -> None:
    """--processes-per-node (default: one per GPU) reaches the train stage's launcher; the job's CPUs are split
    between its processes as their threads."""
    assert SlurmOptions().processes == 1 and SlurmOptions(cpus_per_node=8, gpus_per_node=4).processes == 4
    options = SlurmOptions(cpus_per_node=4, gpus_per_node=4, processes_per_node=2, nodes=2)
    assert options.processes == 2 and options.parameters("x", None)["nodes"] == 2
    task = Task("sw", (), (), tmp_path, "HEAD", tmp_path, tmp_path / "sw", processes=2)
    env = job_env(task, {"SLURM_CPUS_PER_TASK": "4"})
    assert env[NPROC_ENV] == "2" and env["OMP_NUM_THREADS"] == "2"
    assert processes_per_node(env) == 2


def test_only_the_first_node_of_a_job_runs_its_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit runs a job's function once per node; the other nodes' calls return at once, writing nothing (the
    first node's train stage starts their training processes)."""
    task = Task("sw", (), (), tmp_path, "HEAD", tmp_path, tmp_path / "sw")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert Job(task)() is None
    assert not task.status.exists() and not task.workspace.exists()


def test_a_slurm_sweep_without_an_mlflow_server_is_refused_in_one_line(tmp_path: Path) -> None:
    require_mlflow_server("--executor slurm", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(PROJECT)
    for extra in ([], ["--time", "soon"]):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "sweep", "--executor", "slurm", "-S", "base.seed=0,1", *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: "), line
        assert ("needs an MLflow server" if not extra else "--time 'soon'") in line
    assert not (tmp_path / ".dvc").exists()  # nothing written


def test_job_states_come_from_their_records_and_slurms_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``squeue`` on PATH (a script) lists jobs 12 running and 13 pending; the other jobs left the queue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\nprintf '12 RUNNING\\n13 PENDING\\n'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    names = ["sw-shared", "sw-a", "sw-b", "sw-c", "sw-d"]
    record = {
        "rev": "abc", "targets": [], "shared": ["data"], "carry": ["dvc.lock"],
        "experiments": [{"name": name, "overrides": [f"x={name}"]} for name in names[1:]],
    }  # fmt: skip
    sweep = Sweep.create(tmp_path / "sw", record)
    sweep.record["jobs"] = dict(zip(names, ["11", "12", "13", "14", "15"], strict=True))
    sweep.record["logs"] = {name: str(tmp_path / f"{name}.out") for name in names}
    (tmp_path / "sw-d.err").write_text(  # an earlier run's stop; then a failed stage, DVC, submitit's traceback
        "error: training stopped by SIGUSR2 at step 5 of 120: checkpoint saved in ...\n"
        "slurmstepd-vm: error: *** JOB 15 ON vm CANCELLED AT 2026-12-02T07:13:54 DUE TO JOB REQUEUE ***\n"
        "Running stage 'train':\nerror: train.iterations must be >= 1, got 0\n"
        "ERROR: failed to reproduce 'train': failed to run: python -m pipeline train, exited with 1\n"
        "Traceback (most recent call last):\nRuntimeError: `dvc exp run` exited 255\n"
    )
    tasks = {name: Task(name, (), (), tmp_path, "abc", tmp_path, sweep.folder) for name in names}
    write_status(tasks["sw-shared"], DONE)
    write_status(tasks["sw-a"], RUNNING)
    write_status(tasks["sw-b"], REQUEUED)
    write_status(tasks["sw-c"], FAILED, error="`dvc exp run` exited 1", workspace="/ws/sw-c")
    rows = {row.name: row for row in sweep.rows()}
    assert {name: row.state for name, row in rows.items()} == {
        "sw-shared": "done", "sw-a": "running", "sw-b": "queued", "sw-c": "failed", "sw-d": "failed",
    }  # fmt: skip
    assert rows["sw-c"].detail == f"`dvc exp run` exited 1; log: {tmp_path / 'sw-c.out'}; workspace kept: /ws/sw-c"
    assert rows["sw-d"].detail.startswith("left SLURM's queue without finishing")
    assert rows["sw-d"].detail.endswith(  # the last two error lines of its log (sw-c has none)
        " (saying: error: train.iterations must be >= 1, got 0 / ERROR: failed to reproduce 'train': failed to "
        f"run: python -m pipeline train, exited with 1); log: {tmp_path / 'sw-d.out'}"
    )

    finished = [row for row in rows.values() if row.state != "running" and row.name != "sw-b"]
    with pytest.raises(
        SweepFailed, match=r"^2 of 3 job\(s\) failed \(listed above with their logs\): retry$"
    ):
        watch(lambda: finished, 0.0, "retry")
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("failed: ")]
    assert listed == [
        f"failed: sw-c (job 14): `dvc exp run` exited 1; log: {tmp_path / 'sw-c.out'}; workspace kept: /ws/sw-c",
        f"failed: sw-d (job 15): {rows['sw-d'].detail}",
    ]


def test_a_requeued_job_drops_the_dvc_locks_its_killed_run_left(tmp_path: Path) -> None:
    """A killed run's rwlock entry names its dvc's PID; when a live process has that PID (reused, e.g. in a
    requeued job's new PID namespace) DVC refuses to run the stage. The requeued job's workspace is its own, so
    it removes DVC's lock files before it runs DVC again, and keeps everything else."""
    from dvc.fs import LocalFileSystem
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    task = Task("sw-a", (), (), tmp_path, "abc", tmp_path, tmp_path / "sw")
    tmp = task.workspace / ".dvc" / "tmp"
    (task.workspace / ".git").mkdir(parents=True)
    tmp.mkdir(parents=True)
    out = str(task.workspace / "models" / "train")
    stale = {"pid": os.getppid(), "cmd": "dvc exp run -n sw-a"}  # a live PID, not this process
    (tmp / "rwlock").write_text(json.dumps({"read": {}, "write": {out: stale}}))
    (tmp / "lock").write_text(f"{os.getppid()}\n")
    kept = [tmp / "btime", task.workspace / "models" / "train.partial" / "checkpoints" / "latest"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("step_0000002")

    def run_stage() -> None:
        with rwlock(str(tmp), LocalFileSystem(), "dvc exp run -n sw-a", [], [out], False):
            pass

    with pytest.raises(LockError, match="is busy"):
        run_stage()
    prepare(task)
    run_stage()  # DVC takes the lock and releases it
    assert all(path.read_text() == "step_0000002" for path in kept)


@pytest.mark.parametrize(
    ("log", "quoted"),
    [
        ("error: a\nINFO b\nerror: c\nERROR: d\nValueError: e\n", " (saying: error: c / ERROR: d)"),
        (
            (
                "error: stopped by SIGUSR2\n*** JOB 7 ON vm CANCELLED AT 2026-12-02T07:13:54 DUE TO JOB REQUEUE ***\n"
                "ERROR: failed to reproduce 'train'\n"
            ),
            " (saying: ERROR: failed to reproduce 'train')",
        ),
        ("error: stopped by SIGTERM\n*** JOB 7 ON vm CANCELLED AT 2026-12-02T07:13:54 DUE TO PREEMPTION ***\n", ""),
        (None, ""),
    ],
    ids=["last-two", "since-requeue", "nothing-since-preemption", "no-log"],
)
def test_said_quotes_the_last_error_lines_of_the_jobs_last_run(
    tmp_path: Path, log: str | None, quoted: str
) -> None:
    if log is not None:
        (tmp_path / "7_0_log.err").write_text(log)
    assert said(tmp_path / "7_0_log.out") == quoted


def test_status_shows_a_submitted_sweep_without_submitting(tmp_path: Path) -> None:
    """``--status`` reads the sweep of ``--prefix`` (an ``squeue`` script on PATH says job 12 runs): the table
    once and the failures, exit 0; with ``--wait`` once nothing is queued, exit 1; refused with ``-S``, on the
    queue executor, and for a prefix without a sweep, one line each; nothing is submitted."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\n[ -e \"$(dirname \"$0\")/empty\" ] || echo '12 RUNNING'\n")
    (bin_dir / "squeue").chmod(0o755)
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho submitted >&2\nexit 1\n")  # submitting fails loudly
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(PROJECT),
           "COLUMNS": "200"}  # fmt: skip
    names = ["sw-a", "sw-b"]
    record = {"rev": "abc", "targets": [], "shared": [], "carry": [],
              "experiments": [{"name": name, "overrides": [f"x={name}"]} for name in names]}  # fmt: skip
    folder = Sweep.create(tmp_path / ".dvc" / "tmp" / "slurm" / "sw", record).folder
    submitted = {**json.loads((folder / "sweep.json").read_text()), "jobs": {"sw-a": "11", "sw-b": "12"},
                 "logs": {name: f"{name}.out" for name in names}}  # fmt: skip
    (folder / "sweep.json").write_text(json.dumps(submitted))
    tasks = {name: Task(name, (), (), tmp_path, "abc", tmp_path, folder) for name in names}
    write_status(tasks["sw-a"], FAILED, error="`dvc exp run` exited 1", workspace="/ws/sw-a")
    write_status(tasks["sw-b"], RUNNING)

    def sweep_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", "sweep", "--prefix", "sw", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip

    once = sweep_cli("--executor", "slurm", "--status")
    assert once.returncode == 0, once.stdout + once.stderr
    assert "sweep: 0 queued, 1 running, 0 done, 1 failed" in once.stdout
    assert "failed: sw-a (job 11): `dvc exp run` exited 1; log: sw-a.out; workspace kept: /ws/sw-a" in once.stdout
    assert "submitted" not in once.stdout + once.stderr

    (bin_dir / "empty").touch()  # job 12 has left the queue without recording an end
    waited = sweep_cli("--executor", "slurm", "--status", "--wait", "--poll", "0.1")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert waited.stderr.strip().startswith("error: 2 of 2 job(s) failed (listed above with their logs)")

    for args, message in (
        (["--executor", "slurm", "--status", "-S", "base.seed=0,1"], "--status shows a SLURM sweep submitted"),
        (["--status"], "--status shows a SLURM sweep submitted"),
        (["--executor", "slurm", "--status", "--prefix", "nope"], "no SLURM sweep with this --prefix to show"),
    ):
        done = sweep_cli(*args)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def _git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_a_job_clones_a_commit_on_no_branch_from_the_sweeps_remote_ref(tmp_path: Path) -> None:
    """With a Git remote the job clones the remote, fetches the ref the sweep pushed the commit to (it may be on
    no branch) and checks that commit out, never reading the user's repository."""
    repo, remote = tmp_path / "repo", tmp_path / "remote.git"
    repo.mkdir()
    _git(repo, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    _git(repo, "commit", "-qm", "dvc")
    _git(repo, "checkout", "-q", "--detach")
    (repo / "params.yaml").write_text("base: {seed: 3}\n")
    _git(repo, "add", "params.yaml")
    _git(repo, "commit", "-qm", "on no branch")
    rev = _git(repo, "rev-parse", "HEAD")
    _git(tmp_path, "init", "-q", "--bare", str(remote))
    _git(repo, "push", "-q", str(remote), f"{rev}:refs/recyclelora/sweeps/sw")
    _git(repo, "push", "-q", str(remote), "HEAD~1:refs/heads/main")
    shutil.rmtree(repo)  # the nodes cannot see it

    ref = "refs/recyclelora/sweeps/sw"
    task = Task("sw-a", (), (), str(remote), rev, tmp_path / "cache", tmp_path / "sw", fetch=ref)
    prepare(task)
    assert _git(task.workspace, "rev-parse", "HEAD") == rev
    assert (task.workspace / "params.yaml").read_text() == "base: {seed: 3}\n"


def test_a_remote_the_commit_cannot_be_pushed_to_is_refused_in_one_line_leaving_no_sweep(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "dvc.yaml").write_text("stages: {}\n")
    _git(repo, "add", "dvc.yaml")
    _git(repo, "commit", "-qm", "x")
    folder = tmp_path / "shared" / "sw"
    with pytest.raises(UserError, match=r"^cannot push the sweep's commit to --git-remote /nowhere/r\.git: [^\n]+$"):
        submit([Experiment("sw-a", ("base.seed=1",))], [], SlurmOptions(git_remote="/nowhere/r.git"), repo, folder,
               {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})  # fmt: skip
    assert not folder.exists()
    with pytest.raises(ValueError, match="--git-remote 'a b' must be a Git remote's name or URL"):
        SlurmOptions(git_remote="a b")
