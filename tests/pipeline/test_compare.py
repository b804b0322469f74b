"""The comparison's differences to RecycleLoRA: fabricated experiments (``dvc exp show`` rows, per-image tables
read through an injected reader), and one real ``dvc exp run`` read back through ``dvc.api``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

from pipeline import compare
from recyclelora.errors import InvalidInputError
from recyclelora.eval.bootstrap import BootstrapInterval
from recyclelora.eval.reports import IMAGE_TABLE_SCHEMA

TARGETS = ("synth_fog_val", "synth_tex_val")
SEEDS = (0, 1, 2)
CLASSES = 3
HERE = Path(__file__).resolve().parent


def counts(method: str, seed: int, target: str, images: int) -> np.ndarray:
    """``(images, classes, 3)`` TP/FP/FN; ``lora`` moves 5 pixels from FN to TP on every image and class, so
    its IoU is higher everywhere than ``rrqr``'s of the same seed."""
    rng = np.random.default_rng([seed, TARGETS.index(target)])
    base = rng.integers(5, 50, (images, CLASSES, 3))
    if method == "frozen":
        base = np.random.default_rng([seed, 99]).integers(5, 50, (images, CLASSES, 3))
    if method == "lora":
        base = base + np.array([5, 0, -5])
    return base


def write_image_table(path: Path, tables: dict[str, np.ndarray], shuffle: int | None = None) -> None:
    rows = [
        {"dataset": target, "image": f"img{i:02d}", "class_id": c, "tp": int(x[i, c, 0]),
         "fp": int(x[i, c, 1]), "fn": int(x[i, c, 2])}
        for target, x in tables.items() for i in range(x.shape[0]) for c in range(x.shape[1])
    ]  # fmt: skip
    if shuffle is not None:  # the join is by key, not by row order
        rows = [rows[i] for i in np.random.default_rng(shuffle).permutation(len(rows))]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=IMAGE_TABLE_SCHEMA), path)


def experiment_row(method: str, seed: int) -> dict:
    tuning = method if method in ("frozen", "full") else "adapters"
    adapters = tuning == "adapters"
    return {
        "Experiment": f"cmp-{method}-s{seed}", "rev": f"{method}{seed}", "State": "Success",
        "model.tuning": tuning, "model.adapter.init": "rrqr" if not adapters else method, "base.seed": seed,
        "synth_fog_val.mIoU": 0.2, "synth_tex_val.mIoU": 0.4, "mean_mIoU": 0.3, "trainable_parameters/total": 1000,
        "efficiency_main": 0.9 if adapters else None, "efficiency_sub": 0.5 if method == "rrqr" else "None",
        "grassmann_distance": 2.0 if method == "rrqr" else "None",  # dvc exp show renders a JSON null so
    }  # fmt: skip


def fabricate(
    root: Path, methods=("frozen", "lora", "rrqr"), images: int = 12
) -> tuple[list[dict], compare.Reader]:
    """``dvc exp show`` rows and a reader of ``<root>/<rev>/reports/eval/per_image.parquet``."""
    rows = []
    for method in methods:
        for seed in SEEDS:
            row = experiment_row(method, seed)
            tables = {target: counts(method, seed, target, images) for target in TARGETS}
            write_image_table(root / row["rev"] / compare.IMAGE_TABLE, tables, shuffle=seed)
            rows.append(row)

    def read(path: str, rev: str) -> bytes:
        return (root / rev / path).read_bytes()

    return rows, read


def miou(x: np.ndarray) -> float:
    """mIoU of ``(images, classes, 3)`` counts summed over images, by plain loops."""
    total = x.sum(0)
    ious = [tp / (tp + fp + fn) for tp, fp, fn in total.tolist() if tp + fp + fn > 0]
    return sum(ious) / len(ious)


def test_compare_differences_equal_independently_computed_mious(tmp_path: Path) -> None:
    rows, read = fabricate(tmp_path)
    differences = compare.compare_to_reference(rows, read)
    assert list(differences) == ["frozen", "lora"]  # METHODS order, RecycleLoRA left out
    for method in differences:
        expected = {
            target.removesuffix("_val"): np.mean([miou(counts(method, s, target, 12)) for s in SEEDS])
            - np.mean([miou(counts("rrqr", s, target, 12)) for s in SEEDS])
            for target in TARGETS
        }
        per = differences[method]
        assert set(per) == {"synth_fog", "synth_tex", "mean"}
        for target, value in expected.items():
            assert per[target].difference == pytest.approx(value, abs=1e-12)
        assert per["mean"].difference == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
        assert all(interval.low <= interval.high for interval in per.values())


def test_compare_a_method_better_on_every_image_has_intervals_above_zero(tmp_path: Path) -> None:
    rows, read = fabricate(tmp_path, methods=("lora", "rrqr"))
    lora = compare.compare_to_reference(rows, read)["lora"]
    assert all(interval.low > 0 for interval in lora.values()), lora


def test_compare_without_recyclelora_reads_nothing(tmp_path: Path) -> None:
    rows, _ = fabricate(tmp_path, methods=("frozen",))

    def read(path: str, rev: str) -> bytes:
        raise AssertionError("nothing to compare with: nothing to read")

    assert compare.compare_to_reference(rows, read) == {}


def test_compare_refuses_experiments_on_other_images_or_seeds(tmp_path: Path) -> None:
    rows, read = fabricate(tmp_path, methods=("lora", "rrqr"))
    other = tmp_path / "lora1" / compare.IMAGE_TABLE
    tables = {target: counts("lora", 1, target, 12) for target in TARGETS}
    tables["synth_tex_val"] = tables["synth_tex_val"][:11]  # one image fewer
    write_image_table(other, tables)
    with pytest.raises(ValueError, match=r"lora \(seed 1\).*synth_tex lacks images \['img11'\]"):
        compare.compare_to_reference(rows, read)
    write_image_table(other, {"synth_fog_val": tables["synth_fog_val"]})  # one target fewer
    with pytest.raises(ValueError, match=r"targets \['synth_fog'\] instead of \['synth_fog', 'synth_tex'\]"):
        compare.compare_to_reference(rows, read)
    rows, read = fabricate(tmp_path, methods=("lora", "rrqr"))
    fewer = [row for row in rows if row["Experiment"] != "cmp-lora-s2"]
    with pytest.raises(
        ValueError, match=r"lora has finished experiments for seeds \[0, 1\] but rrqr for \[0, 1, 2\]"
    ):
        compare.compare_to_reference(fewer, read)
    with pytest.raises(ValueError, match="two finished lora experiments have seed 0"):
        compare.compare_to_reference([*rows, rows[0] | {"Experiment": "cmp-lora-s0-again"}], read)


def test_compare_writes_both_tables_and_the_chart_and_logs_them(tmp_path: Path) -> None:
    rows, read = fabricate(tmp_path / "exps")
    differences = compare.compare_to_reference(rows, read)
    out = tmp_path / "docs" / "comparison.md"
    files = compare.write_comparison(compare.collect(rows), differences, "note", out)
    chart = tmp_path / "docs" / "img" / "comparison.png"
    assert files == [out, chart]
    assert chart.read_bytes().startswith(b"\x89PNG")
    text = out.read_text()
    lines = text.splitlines()
    assert "| Frozen backbone | 3 | 0.00 M | 20.0 ± 0.0 | 40.0 ± 0.0 | 30.0 ± 0.0 | - | - |" in lines
    assert (
        "| RecycleLoRA | 3 | 0.00 M | 20.0 ± 0.0 | 40.0 ± 0.0 | 30.0 ± 0.0 | 0.900 / 0.500 | 2.000 |" in lines
    )
    assert "## Difference to RecycleLoRA" in lines and compare.DIFFERENCE_NOTE in lines
    assert "| method | synth_fog | synth_tex | mean |" in lines
    lora = differences["lora"]
    cells = " | ".join(compare.difference_cell(lora[key]) for key in ("synth_fog", "synth_tex", "mean"))
    assert f"| LoRA | {cells} |" in lines
    assert lines[-1] == "![mIoU difference to RecycleLoRA, mean over targets](img/comparison.png)"

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = compare.log_comparison(uri, "cmp", "abc123", files)  # creates the experiment as a stage would
    experiment = client.get_experiment_by_name(compare.MLFLOW_EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    run = client.get_run(run_id)
    assert run.info.run_name == "compare-cmp" and run.data.tags["recyclelora.table"] == "cmp"
    logged = {entry.path for entry in client.list_artifacts(run_id, "comparison")}
    assert logged == {"comparison/comparison.md", "comparison/comparison.png"}


def fabricate_curve(root: Path) -> tuple[list[dict], compare.Reader]:
    """Rows of two budgets, named alike: LoRA and RecycleLoRA at 200 steps, the frozen backbone and RecycleLoRA
    at 60 (other counts), plus a failed experiment; ``seconds`` is half the steps."""
    rows = []
    for steps, methods in ((200, ("lora", "rrqr")), (60, ("frozen", "rrqr"))):
        budget, _ = fabricate(root / str(steps), methods=methods)
        rows += [
            row | {"train.iterations": steps, "rev": f"{steps}/{row['rev']}", "seconds": steps / 2}
            for row in budget
        ]
    rows.append(rows[0] | {"train.iterations": 600, "State": "Failed", "rev": "missing"})

    def read(path: str, rev: str) -> bytes:
        return (root / rev / path).read_bytes()

    return rows, read


def test_curve_groups_experiments_by_their_steps_param_and_compares_within_each_budget(
    tmp_path: Path,
) -> None:
    rows, read = fabricate_curve(tmp_path)
    points = compare.curve_points(rows, read)
    assert list(points) == [60, 200]  # increasing; the failed 600-step experiment left out
    for steps in points:
        budget = [row for row in rows if row["train.iterations"] == steps]
        assert points[steps].scores == compare.collect(budget)
        assert points[steps].differences == compare.compare_to_reference(budget, read)
    assert set(points[60].differences) == {"frozen"} and set(points[200].differences) == {"lora"}
    assert points[200].scores["lora"]["seconds"] == [100.0] * 3
    assert points[200].differences["lora"]["mean"].low > 0  # LoRA's counts are better on every image


def test_curve_writes_one_row_per_budget_a_chart_and_a_record_it_reads_back(tmp_path: Path) -> None:
    rows, read = fabricate_curve(tmp_path / "exps")
    points = compare.curve_points(rows, read)
    curve = {steps: compare.summarise(point, "experiments of abc1234") for steps, point in points.items()}
    assert curve[200].scores["lora"] == compare.Score(0.3, 0.0) and curve[200].seconds == 100.0
    assert curve[60].differences == {"frozen": points[60].differences["frozen"]["mean"]}
    out = tmp_path / "docs" / "training-curve.md"
    files = compare.write_curve(curve, "note", out)
    docs = tmp_path / "docs"
    assert files == [out, docs / "img" / "training-curve.png", docs / "training-curve.json"]
    assert files[1].read_bytes().startswith(b"\x89PNG")
    lines = out.read_text().splitlines()
    header = (
        "| steps | seeds | Frozen backbone | LoRA | RecycleLoRA | Frozen backbone - RecycleLoRA | "
        "LoRA - RecycleLoRA | training s / run | measured |"
    )
    assert header in lines
    frozen = compare.difference_cell(points[60].differences["frozen"]["mean"])
    lora = compare.difference_cell(points[200].differences["lora"]["mean"])
    assert f"| 60 | 3 | 30.0 ± 0.0 | - | 30.0 ± 0.0 | {frozen} | - | 30 | experiments of abc1234 |" in lines
    assert f"| 200 | 3 | - | 30.0 ± 0.0 | 30.0 ± 0.0 | - | {lora} | 100 | experiments of abc1234 |" in lines
    assert lines[-1].endswith("(img/training-curve.png)")
    assert compare.read_record(files[2]) == curve


def test_a_curve_run_replaces_the_budgets_it_ran_and_keeps_the_others(tmp_path: Path) -> None:
    def row(mean: float, source: str, seeds: int = 1) -> compare.CurveRow:
        interval = BootstrapInterval(mean - 0.3, mean - 0.4, mean - 0.2, 2000, 0.95)
        return compare.CurveRow(seeds, {"rrqr": compare.Score(mean, None)}, {"lora": interval}, 10.0, source)

    record = tmp_path / "training-curve.json"
    assert compare.grown(record, {600: row(0.3, "new")}) == {600: row(0.3, "new")}  # no record yet
    compare.write_record({600: row(0.29, "old"), 60: row(0.11, "old")}, record)
    curve = compare.grown(record, {600: row(0.3, "new", 3), 200: row(0.17, "new")})
    assert list(curve) == [60, 200, 600]
    assert curve == {60: row(0.11, "old"), 200: row(0.17, "new"), 600: row(0.3, "new", 3)}


def test_a_revision_is_resolved_to_its_commit_or_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
         "--allow-empty", "-m", "c"], check=True,
    )  # fmt: skip
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(tmp_path)
    assert compare.commit("HEAD") == compare.commit(head[:7]) == head
    with pytest.raises(InvalidInputError, match="--rev nope: not a commit of this repository"):
        compare.commit("nope")


@pytest.mark.parametrize(
    "text", ["{", '{"version": 2, "budgets": {}}', '{"version": 1, "budgets": {"60": {"seeds": 3}}}']
)
def test_a_damaged_curve_record_is_one_line_that_says_how_to_restore_it(tmp_path: Path, text: str) -> None:
    record = tmp_path / "training-curve.json"
    record.write_text(text)
    with pytest.raises(InvalidInputError, match=r"not a training-curve record .*git checkout"):
        compare.grown(record, {})


def test_curve_queues_each_budget_as_the_preset_with_its_steps(tmp_path: Path) -> None:
    preset = tmp_path / "table.yaml"
    preset.write_text("train:\n  iterations: 60\n  val_every: 0\nmodel:\n  tuning: adapters\n")
    assert compare.budget_overrides(preset) == [
        "train.iterations=60",
        "train.val_every=0",
        "model.tuning=adapters",
    ]
    assert compare.budget_overrides(preset, 600) == [
        "train.iterations=600",
        "train.val_every=0",
        "model.tuning=adapters",
    ]  # replaced, not repeated: Hydra refuses two values for one key
    assert compare.budget_overrides(None, 200) == ["train.iterations=200"]


def test_curve_finds_experiments_by_prefix_and_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["curve60-lora-s0", "curve600-rrqr-s1", "curvex-lora-s0", "cmp-lora-s0", "curve60", None]
    monkeypatch.setattr(
        compare.results.dvc.api, "exp_show", lambda revs: [{"Experiment": name} for name in names]
    )
    assert [row["Experiment"] for row in compare.curve_experiments("curve")] == names[:2]
    assert [row["Experiment"] for row in compare.experiments("curve60")] == names[:1]
    assert [row["Experiment"] for row in compare.experiments("cu.ve60")] == []  # the prefix is not a regex


def test_queue_workers_share_the_cores_and_need_a_server_side_by_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compare.runner.os, "cpu_count", lambda: 16)
    assert compare.worker_env(1, "cmp", {"PATH": "/bin"}) == {"PATH": "/bin", "RECYCLELORA_TABLE": "cmp"}
    server = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert compare.worker_env(4, "cmp", server)["OMP_NUM_THREADS"] == "4"
    assert compare.worker_env(32, "cmp", server)["OMP_NUM_THREADS"] == "1"
    assert (
        compare.worker_env(4, "cmp", server | {"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"
    )  # the user's
    for store in ({}, {"MLFLOW_TRACKING_URI": "sqlite:////tmp/mlflow.db"}):
        with pytest.raises(
            ValueError, match=r"--jobs 2 runs experiments side by side, which needs an MLflow server"
        ):
            compare.worker_env(2, "cmp", store)


def test_waiting_restarts_the_workers_while_experiments_queue_with_too_few_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def rows(*states: str | None) -> list[dict]:
        return [{"Experiment": f"cmp-lora-s{i}", "State": state} for i, state in enumerate(states)]

    polls = iter([
        rows("Running", "Running", "Queued"),  # both workers busy
        rows("Success", "Running", "Queued"),  # one worker died (or is between tasks): start it again
        rows("Success", "Running", "Running"),  # nothing waits
        rows("Success", "Success", None),  # done; None: a finished experiment whose queue entry is gone
    ])  # fmt: skip
    monkeypatch.setattr(compare.runner, "experiments", lambda prefix, rev: next(polls))
    monkeypatch.setattr(compare.runner.time, "sleep", lambda seconds: None)
    restarts = []
    done = compare.wait_for("cmp", "HEAD", 30.0, lambda: restarts.append(1), jobs=2)
    assert [row["State"] for row in done] == ["Success", "Success", None]
    assert restarts == [1]


MAKE_TABLE = """\
import sys
from pathlib import Path

sys.path[:0] = [{tests!r}, {project!r}]  # this module and the pipeline package it imports
import yaml
from test_compare import TARGETS, counts, write_image_table

params = yaml.safe_load(Path("params.yaml").read_text())
method, seed = params["model"]["adapter"]["init"], params["base"]["seed"]
tables = {{target: counts(method, seed, target, 6) for target in TARGETS}}
write_image_table(Path("reports/eval/per_image.parquet"), tables)
"""


def run(command: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))} | {
        "DVC_NO_ANALYTICS": "1"
    }
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_compare_reads_each_experiments_per_image_table_through_dvc_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real ``dvc exp run`` experiments whose stage writes ``reports/eval/per_image.parquet`` (a DVC out): the
    comparison reads each one back at the experiment's commit from ``dvc exp show``'s ``rev``, not the
    workspace's copy (which holds the last experiment's)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "make_table.py").write_text(MAKE_TABLE.format(tests=str(HERE), project=str(HERE.parents[1])))
    params = {"base": {"seed": 0}, "model": {"tuning": "adapters", "adapter": {"init": "rrqr"}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          evaluate:
            cmd: {sys.executable} make_table.py
            deps: [make_table.py]
            params: [base.seed, model]
            outs: [reports/eval]
        """))  # fmt: skip
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        git + ["add", "-A"],
        git + ["commit", "-qm", "x"],
    ):
        run(command, repo)
    for method in ("lora", "rrqr"):
        for seed in (0, 1):
            name = f"cmp-{method}-s{seed}"
            run(
                [
                    "dvc",
                    "exp",
                    "run",
                    "-n",
                    name,
                    "-S",
                    f"model.adapter.init={method}",
                    "-S",
                    f"base.seed={seed}",
                ],
                repo,
            )
    monkeypatch.chdir(repo)
    rows = compare.experiments("cmp")
    assert sorted(row["Experiment"] for row in rows) == [
        "cmp-lora-s0",
        "cmp-lora-s1",
        "cmp-rrqr-s0",
        "cmp-rrqr-s1",
    ]
    for row in rows:
        read_back = compare.image_counts(compare.read_dvc(compare.IMAGE_TABLE, row["rev"]))
        method, seed = compare.method_of(row), int(row["base.seed"])
        for target in TARGETS:
            expected = counts(method, seed, target, 6)
            np.testing.assert_array_equal(read_back[target.removesuffix("_val")].counts, expected)
    lora = compare.compare_to_reference(rows)["lora"]
    assert all(interval.low > 0 for interval in lora.values())


def test_preset_none_runs_the_committed_params_without_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--preset none`` is no preset (a paper setting committed as params.yaml keeps its own budget); a path
    stays a path."""
    from typer.testing import CliRunner

    from pipeline.compare import cli

    seen: list[Path | None] = []
    monkeypatch.setattr(cli, "_table", lambda prefix, rev, out, preset: seen.append(preset))
    runner = CliRunner()
    assert runner.invoke(cli.app, ["table", "--preset", "none"]).exit_code == 0
    assert runner.invoke(cli.app, ["table", "--preset", "presets/table.yaml"]).exit_code == 0
    assert seen == [None, Path("presets/table.yaml")]
    assert compare.budget_overrides(None) == []


FAKE_QUEUE_START = """\
#!/bin/sh
echo "Started '$4' new experiments task queue workers."
sleep 120 &
echo $! > "{pidfile}"
"""


def test_started_workers_do_not_hold_the_output_of_the_run(tmp_path: Path) -> None:
    """``dvc queue start`` leaves daemons behind; they must not inherit the comparison's stdout or stderr, or a
    reader of its output (a pipe, a test) waits for the last worker long after the table is written."""
    bin_dir, pidfile = tmp_path / "bin", tmp_path / "worker.pid"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(FAKE_QUEUE_START.format(pidfile=pidfile))
    (bin_dir / "dvc").chmod(0o755)
    env = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(HERE.parents[1]),
    }
    code = "import os; from pipeline.compare.runner import start_workers; start_workers(2, os.environ)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
        )  # a worker holding the pipes would make this wait 120 s
    finally:
        if pidfile.is_file():  # else the fake dvc failed before it left a worker: the assertions say why
            os.kill(int(pidfile.read_text()), 9)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Started '2' new experiments task queue workers.\n"
