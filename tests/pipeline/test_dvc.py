"""dvc.yaml against the stage modules, and ``dvc repro`` end to end on tiny params in a temporary Git repo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.stages import analyze, data, evaluate, export, init, merge, package, train, weights
from tests.pipeline.workspace import GIT, tiny_repo

PROJECT = Path(__file__).resolve().parents[2]
MODULES = {
    "data": data, "weights": weights, "init": init, "train": train, "merge": merge, "evaluate": evaluate,
    "export": export, "package": package, "analyze": analyze,
}  # fmt: skip
ENV_DROPPED = ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "RECYCLELORA_PARENT_RUN_ID",
               "RECYCLELORA_MLFLOW_DB")  # fmt: skip


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def out_paths(stage: dict) -> set[str]:
    paths = set()
    for entry in [*stage.get("outs", []), *stage.get("metrics", [])]:
        paths |= set(entry) if isinstance(entry, dict) else {entry}
    return paths


def test_dvc_yaml_matches_the_stage_modules() -> None:
    stages = dvc_stages()
    assert list(stages) == list(MODULES)
    for name, stage in stages.items():
        command = " ".join(stage["cmd"].split())
        assert command.startswith(f"python -m pipeline {name} "), command
        deps, outs = set(stage["deps"]), out_paths(stage)
        assert f"pipeline/stages/{name}.py" in deps
        for dep in deps:
            assert (PROJECT / dep).exists() or any(dep in out_paths(s) for s in stages.values()), dep
        # every path the command reads is a dependency (or inside one), every path it writes is an output
        for option, path in re.findall(r"--([a-z-]+) (\S+)", command):
            if option in ("out", "metrics", "reports", "checksums"):
                assert path in outs, f"{name}: --{option} {path} is not an output"
            else:
                assert any(path == dep or path.startswith(f"{dep}/") for dep in deps), (
                    f"{name}: {path} not a dep"
                )
        for entry in stage.get("metrics", []):
            assert all(options == {"cache": False} for options in entry.values())
    # the decomposition never depends on training settings; neither it nor the converted ViT on the neck, the
    # blocks feeding it or stochastic depth, which change neither's output
    assert not any(
        key == "train" or key.startswith(("train.", "data", "base")) for key in stages["init"]["params"]
    )
    for name in ("weights", "init"):
        keys = stages[name]["params"]
        assert {"model.backbone.name", "model.backbone.weights", "model.backbone.img_size"} <= set(keys)
        assert not {"model", "model.backbone", "model.head"} & set(keys), keys
        assert not any(key.rpartition(".")[2] in ("pyramid", "out_indices", "drop_path_rate") for key in keys)
    plots = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["plots"]
    curves = [next(iter(plot.values())) for plot in plots if isinstance(plot, dict)]
    assert curves and all(curve["x"] == "step" for curve in curves)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def changed_stages(repo: Path, env: dict[str, str]) -> set[str]:
    """Stages ``dvc status`` reports as changed."""
    status = run(["dvc", "status", "--json"], repo, env)
    return set(yaml.safe_load(status[status.index("{") :]))


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_nothing(tmp_path: Path) -> None:
    repo = tiny_repo(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED} | {"DVC_NO_ANALYTICS": "1"}

    first = run(["dvc", "repro"], repo, env)
    assert [f"Running stage '{name}'" in first for name in MODULES] == [True] * len(MODULES)
    for metrics in ("train", "eval", "export", "analysis"):
        assert (repo / "metrics" / f"{metrics}.json").is_file()
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("recyclelora").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = sorted(
        r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    )
    assert children == sorted(MODULES) and parent.info.status == "FINISHED"

    second = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in second and all(
        f"Stage '{name}' didn't change" in second for name in MODULES
    )
    assert changed_stages(repo, env) == set()

    # training params rerun training and what follows it, never the data, weights or decomposition
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed_stages(repo, env) == {"train"}  # dvc status names the stages whose own inputs changed
    params["model"]["adapter"]["rank_main"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed_stages(repo, env) == {"init", "train"}

    # the comparison table: queued experiments per method and seed, run by a DVC queue worker, aggregated
    run(GIT + ["checkout", "params.yaml"], repo, env)
    (repo / "short.yaml").write_text("train: {iterations: 2}\n")
    table = repo / "table.md"
    run([sys.executable, "-m", "pipeline.compare", "run", "--method", "frozen", "--seed", "0", "--seed", "1",
         "--preset", "short.yaml", "--poll", "1", "--out", str(table)], repo, env)  # fmt: skip
    lines = table.read_text().splitlines()
    assert (
        "| method | seeds | trainable params | synth_fog | synth_tex | mean | rank efficiency | Grassmann distance |"
        in lines
    )
    (row,) = [line for line in lines if line.startswith("| Frozen backbone |")]
    assert re.fullmatch(
        r"\| Frozen backbone \| 2 \| 0\.\d\d M \|( \d+\.\d ± \d+\.\d \|){3} - \| - \|", row
    ), row


# The stages run the workspace's own code


def copy_code(repo: Path) -> None:
    """The workspace's ``recyclelora/`` and ``pipeline/`` (no caches) into ``repo``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("recyclelora", "pipeline"):
        shutil.copytree(PROJECT / name, repo / name, ignore=ignore)


def mark_library(repo: Path, marker: str) -> None:
    """Make ``repo``'s copy of a library module print ``marker``, its own file and the ``pipeline`` package's."""
    module = repo / "recyclelora" / "cli" / "common.py"
    source = module.read_text().split("\n# marker\n")[0]
    module.write_text(
        f"{source}\n# marker\nimport sys as _sys\n"
        f"print({marker!r}, __file__, getattr(_sys.modules.get('pipeline'), '__file__', None))\n"
    )


def test_a_stage_runs_the_workspace_code_not_the_installed_package(tmp_path: Path) -> None:
    """``python -m pipeline`` in a copy of the workspace imports the copy's library and stages, whatever is
    installed (``recyclelora`` is installed in editable mode from this checkout)."""
    copy_code(tmp_path)
    mark_library(tmp_path, "edited-library")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    marker, library, stages = done.stdout.splitlines()[0].split()
    assert marker == "edited-library"
    assert Path(library) == tmp_path / "recyclelora" / "cli" / "common.py"
    assert Path(stages) == tmp_path / "pipeline" / "__init__.py"
    assert "Stages of the DVC pipeline" in done.stdout


@pytest.mark.slow
def test_a_queued_experiment_runs_the_code_it_was_queued_with(tmp_path: Path) -> None:
    """``dvc exp run --queue`` with an edited library file, then another edit in the workspace before the queue
    runs: the experiment (in its copy under .dvc/tmp/exps) runs the queued edit, not the workspace's."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_code(repo)
    (repo / "dvc.yaml").write_text(
        "stages:\n  probe:\n    cmd: python -m pipeline --help > probe.txt\n    deps: [pipeline, recyclelora]\n"
        "    outs:\n      - probe.txt:\n          cache: false\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED} | {
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` is this one
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "code"]):
        run(GIT + args, repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(GIT + ["commit", "-q", "-m", "dvc"], repo, env)

    mark_library(repo, "queued-library")
    run(["dvc", "exp", "run", "--queue", "-n", "probe"], repo, env)
    mark_library(repo, "workspace-library")  # edited again while the experiment waits in the queue
    run(["dvc", "queue", "start"], repo, env)
    deadline = time.monotonic() + 300
    while not (refs := run(GIT + ["for-each-ref", "--format=%(refname)", "refs/exps"], repo, env).split()):
        status = run(["dvc", "queue", "status"], repo, env)
        assert "Failed" not in status, status + run(["dvc", "queue", "logs", "probe"], repo, env)
        assert time.monotonic() < deadline, status
        time.sleep(1)
    (ref,) = refs
    probe = run(GIT + ["show", f"{ref}:probe.txt"], repo, env)
    marker, library, stages = probe.splitlines()[0].split()
    assert marker == "queued-library"
    copy = Path(library).parents[2]  # <copy>/recyclelora/cli/common.py
    assert ".dvc/tmp/exps" in copy.as_posix() and copy != repo
    assert Path(stages) == copy / "pipeline" / "__init__.py"
    assert "workspace-library" in (repo / "recyclelora" / "cli" / "common.py").read_text()
