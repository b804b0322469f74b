"""The comparison table: every method x seed as a queued DVC experiment, aggregated into a Markdown table.

    python -m pipeline.compare run                 # queue 8 methods x 3 seeds, run them, write the table
    python -m pipeline.compare queue               # only queue them; then `dvc queue start`, `dvc exp show`
    python -m pipeline.compare table               # aggregate finished experiments into docs/comparison.md

Each experiment is ``dvc exp run --queue -n <prefix>-<method>-s<seed> -S <preset keys> -S <method keys>
-S base.seed=<seed> evaluate analyze``: the preset (``presets/table.yaml``: shorter training on a CPU) and the
method are params overrides of the current workspace; ``export`` is not run. Data, weights and each
initialiser's decomposition are computed once and restored from DVC's run cache afterwards. The table reports,
per method and target domain, the mean and the sample standard deviation (n - 1) of mIoU over seeds, read from
each experiment's ``metrics/eval.json`` as ``dvc exp show`` reports it; the method is read back from the
experiment's params, not its name.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import dvc.api
import typer
from dvc.exceptions import NotDvcRepoError

from recyclelora.adapters.initialisers import INITIALISERS
from recyclelora.cli.common import user_errors
from recyclelora.config import read_yaml
from recyclelora.io import atomic_write_text

#: Params overrides of each method: the two backbone baselines (they keep the default init, unused), then every
#: adapter initialiser, the single-adapter baselines first.
METHODS: dict[str, dict[str, str]] = {
    "frozen": {"model.tuning": "frozen"},
    "full": {"model.tuning": "full"},
} | {
    name: {"model.tuning": "adapters", "model.adapter.init": name}
    for name in sorted(INITIALISERS, key=lambda name: INITIALISERS[name].layout != "single")
}
LABELS: dict[str, str] = {"frozen": "Frozen backbone", "full": "Full fine-tuning"} | {
    name: entry.label for name, entry in INITIALISERS.items()
}
SEEDS: tuple[int, ...] = (0, 1, 2)
TARGET_STAGES: tuple[str, ...] = ("evaluate", "analyze")
#: Keys of ``metrics/eval.json`` in a ``dvc exp show`` row: ``<target>.mIoU`` per target and their mean.
MIOU_SUFFIX = ".mIoU"
MEAN_KEY = "mean_mIoU"
#: Key of ``metrics/train.json``: the run's trainable parameters (adapters or backbone, neck, head).
PARAMS_KEY = "trainable_parameters/total"
PENDING_STATES = frozenset({"Queued", "Running"})
#: ``State`` of a finished experiment: ``Success`` while its queue entry lasts, then none.
FINISHED_STATES = frozenset({"Success", None})

app = typer.Typer(
    help="Queue, run and tabulate the method comparison (DVC experiments).", no_args_is_help=True
)


def override_value(value: Any) -> str:
    """A params value in the override syntax of ``dvc exp run -S`` (Hydra): ``null``, ``true``, ``1e-05``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(
        f"only scalar values can be passed to `dvc exp run -S`, got {value!r}: put it in params.yaml"
    )


def preset_overrides(preset: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` overrides for every leaf of a preset mapping (dotted keys)."""
    overrides = []
    for key, value in preset.items():
        if isinstance(value, Mapping):
            overrides += preset_overrides(value, f"{prefix}{key}.")
        else:
            overrides.append(f"{prefix}{key}={override_value(value)}")
    return overrides


def method_of(row: Mapping[str, Any]) -> str:
    """The method of a ``dvc exp show`` row (flat params): ``frozen``, ``full`` or the adapters' initialiser."""
    tuning = row["model.tuning"]
    return tuning if tuning != "adapters" else row["model.adapter.init"]


def queue_commands(
    methods: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], prefix: str
) -> list[list[str]]:
    """One ``dvc exp run --queue`` command per method and seed."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {list(METHODS)}")
    commands = []
    for method in methods:
        for seed in seeds:
            pairs = [*overrides, *(f"{k}={v}" for k, v in METHODS[method].items()), f"base.seed={seed}"]
            sets = [arg for pair in pairs for arg in ("-S", pair)]
            name = f"{prefix}-{method}-s{seed}"
            commands.append(["dvc", "exp", "run", "--queue", "-n", name, *sets, *TARGET_STAGES])
    return commands


def experiments(prefix: str, rev: str = "HEAD") -> list[dict[str, Any]]:
    """``dvc exp show`` rows of the experiments named ``<prefix>-...`` based on Git revision ``rev``."""
    rows = dvc.api.exp_show(revs=rev)
    return [row for row in rows if (row.get("Experiment") or "").startswith(f"{prefix}-")]


def collect(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{method: {target, "mean" or "params": [value of each finished experiment]}}`` from ``dvc exp show``.

    A row holds its params and metrics flattened: ``<target>.mIoU`` and ``mean_mIoU`` come from
    ``metrics/eval.json`` (the only metrics file with such keys), targets losing their ``_val`` suffix;
    ``params`` is the trainable parameter count of ``metrics/train.json``.
    """
    scores: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row.get("State") not in FINISHED_STATES:  # queued, running or failed
            continue
        per_method = scores.setdefault(method_of(row), {})
        for key, value in row.items():
            if key in (MEAN_KEY, PARAMS_KEY):
                name = "mean" if key == MEAN_KEY else "params"
            elif key.endswith(MIOU_SUFFIX):
                name = key.removesuffix(MIOU_SUFFIX).removesuffix("_val")
            else:
                continue
            if value is not None:
                per_method.setdefault(name, []).append(float(value))
    return scores


def cell(values: Sequence[float]) -> str:
    """``mean ± std`` in percent (sample standard deviation), ``mean`` alone for one value."""
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def markdown_table(scores: Mapping[str, Mapping[str, Sequence[float]]], note: str) -> str:
    """Methods (in :data:`METHODS` order) with their trainable parameters, by target domains and their mean,
    mIoU in percent."""
    targets = sorted({key for per in scores.values() for key in per if key not in ("mean", "params")})
    columns = [*targets, "mean"]
    lines = [
        "# Method comparison on the embedded benchmark",
        "",
        note,
        "",
        "| method | seeds | trainable params | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for method in (m for m in METHODS if m in scores):
        per = scores[method]
        seeds = max(len(values) for values in per.values())
        params = f"{max(per['params']) / 1e6:.2f} M" if per.get("params") else "-"
        cells = [cell(per[c]) if per.get(c) else "-" for c in columns]
        lines.append(f"| {LABELS[method]} | {seeds} | {params} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wait_for(prefix: str, rev: str, poll_seconds: float) -> list[dict[str, Any]]:
    """Poll ``dvc exp show`` until no ``<prefix>-`` experiment is queued or running; return the rows."""
    while True:
        try:
            rows = experiments(prefix, rev)
        except NotDvcRepoError as error:  # a finishing experiment's temporary workspace vanished mid-read
            typer.echo(f"dvc exp show failed ({error}); retrying", err=True)
            time.sleep(poll_seconds)
            continue
        pending = [row["Experiment"] for row in rows if row.get("State") in PENDING_STATES]
        if not pending:
            return rows
        typer.echo(f"{len(pending)} experiment(s) queued or running ({', '.join(pending[:3])}...)")
        time.sleep(poll_seconds)


def _queue(methods: list[str], seeds: list[int], preset: Path | None, prefix: str) -> None:
    existing = sorted(row["Experiment"] for row in experiments(prefix))
    if existing:
        raise ValueError(
            f"experiments {existing[:4]}... exist: remove them "
            f"(`dvc exp remove {' '.join(existing[:2])} ...`) "
            "or choose another --prefix"
        )
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], check=False).returncode:
        typer.echo(
            "warning: params.yaml differs from HEAD (an earlier `dvc exp run` leaves its params in the "
            "workspace): every queued experiment inherits the difference; `git checkout params.yaml` "
            "to avoid it",
            err=True,
        )
    overrides = preset_overrides(read_yaml(preset) or {}) if preset else []
    for command in queue_commands(methods, seeds, overrides, prefix):
        subprocess.run(command, check=True)


def head_commit() -> str:
    """The commit experiments queued now are based on (commits made while they run do not move it)."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _table(prefix: str, rev: str, out: Path, preset: Path | None) -> None:
    rows = experiments(prefix, rev)
    failed = [row["Experiment"] for row in rows if row.get("State") == "Failed"]
    scores = collect(rows)
    if not scores:
        raise ValueError(
            f"no finished experiment named {prefix}-... based on {rev}: run `python -m pipeline.compare run`, "
            "or pass the commit they were queued from as --rev"
        )
    note = (
        f"mIoU (%) on each target domain, mean ± sample standard deviation over seeds; params of "
        f"`params.yaml` with `{preset or 'no preset'}` (`python -m pipeline.compare run`)."
        + (f" Failed, left out: {', '.join(failed)}." if failed else "")
    )
    atomic_write_text(out, markdown_table(scores, note))
    typer.echo(out.read_text())


Methods = Annotated[
    list[str] | None, typer.Option("--method", help=f"Repeat; default: all of {list(METHODS)}.")
]
Seeds = Annotated[list[int] | None, typer.Option("--seed", help=f"Repeat; default: {list(SEEDS)}.")]
Preset = Annotated[Path | None, typer.Option(help="Params overrides for every experiment.")]
Prefix = Annotated[str, typer.Option(help="Experiment names are <prefix>-<method>-s<seed>.")]
Out = Annotated[Path, typer.Option(help="Markdown table to write.")]
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
        _queue(method or list(METHODS), seed or list(SEEDS), preset, prefix)


@app.command()
def run(
    method: Methods = None,
    seed: Seeds = None,
    preset: Preset = Path("presets/table.yaml"),
    prefix: Prefix = "cmp",
    out: Out = Path("docs/comparison.md"),
    jobs: Annotated[int, typer.Option(help="Queue workers (more than 1 needs an MLflow server).")] = 1,
    poll: Annotated[float, typer.Option(help="Seconds between progress checks.")] = 30.0,
) -> None:
    """Queue, run (`dvc queue start`), wait, and write the table."""
    with user_errors():
        rev = head_commit()
        _queue(method or list(METHODS), seed or list(SEEDS), preset, prefix)
        subprocess.run(["dvc", "queue", "start", "--jobs", str(jobs)], check=True)
        wait_for(prefix, rev, poll)
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


if __name__ == "__main__":
    app()
