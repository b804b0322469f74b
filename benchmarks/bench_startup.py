"""Start-up time of the command lines, and the import overhead of each DVC stage, each in a fresh process.

Rows: the interpreter alone (``python -c pass``) and a two-command Typer app's ``--help`` (the floor of any
Typer command line: typer, click, rich and pydantic imported, help rendered), ``recyclelora-cli --help`` and the ``--help`` of
every command and sub-command, ``python -m pipeline --help`` and every stage's ``--help``, and the bare import of
each stage module (``python -c "import pipeline.stages.<name>"``: what a stage process pays before it works),
beside the package floors: the bare import of torch, torchvision, timm and MLflow, alone and together (a stage
that builds a model imports all four: timm imports torchvision, which imports ``torch._dynamo``).
Target: every ``--help`` under 1 s. Each command runs with its tree's root as working directory and on
``PYTHONPATH``, so it imports that tree's code whatever is installed. ``recyclelora-cli`` is run as its console
script does (``from recyclelora.cli.main import app; app()``).

With ``--before DIR`` the same rows run, interleaved, on another checkout (the code before a change) and the
table shows both side by side; there the stages are ``recyclelora-cli stage <name>`` when the checkout has no
``pipeline/__main__.py``. Make one without touching the working tree:

    git worktree add /tmp/before <commit>
    python -m benchmarks.bench_startup --before /tmp/before [--repeats 3] [--match 'import|floor']
    git worktree remove /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0
CLI = "import sys; from recyclelora.cli.main import app; sys.exit(app(prog_name='recyclelora-cli'))"
#: Prints the command paths of ``module:app`` (a Typer app) as JSON: ``[[], ["data"], ["data", "prepare"], ...]``.
COMMANDS = """
import importlib, json, sys
import typer
module, name = sys.argv[1].split(":")
def paths(command, prefix=()):
    yield list(prefix)
    for sub_name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, (*prefix, sub_name))
print(json.dumps(list(paths(typer.main.get_command(getattr(importlib.import_module(module), name))))))
"""
#: Third-party imports the stages cannot do without, alone and together (the floor of a model-building stage).
PACKAGE_FLOORS = ("torch", "torch, torchvision", "torch, torchvision, timm", "mlflow", "torch, torchvision, timm, mlflow")
TYPER_FLOOR = """
import typer
app = typer.Typer()
@app.command()
def one(value: int = 1) -> None:
    \"\"\"One.\"\"\"
@app.command()
def two(value: int = 2) -> None:
    \"\"\"Two.\"\"\"
app()
"""


def environment(root: Path) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(root), "COLUMNS": "100", "RECYCLELORA_DEBUG": "0"}


def command_paths(app: str) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", COMMANDS, app], cwd=ROOT, env=environment(ROOT), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def rows(
    root: Path, library: list[list[str]], stages: list[list[str]], modules: list[str]
) -> dict[str, list[str]]:
    """Row label -> the argv that measures it in checkout ``root``."""
    python = sys.executable
    own_pipeline = (root / "pipeline" / "__main__.py").is_file()
    table = {
        "python -c pass (interpreter alone)": [python, "-c", "pass"],
        "typer floor: a 2-command app, one --help": [python, "-c", TYPER_FLOOR, "one", "--help"],
    }
    for path in library:
        table[" ".join(["recyclelora-cli", *path, "--help"])] = [python, "-c", CLI, *path, "--help"]
    for path in stages:
        argv = [python, "-m", "pipeline"] if own_pipeline else [python, "-c", CLI, "stage"]
        table[" ".join(["python -m pipeline", *path, "--help"])] = [*argv, *path, "--help"]
    for packages in PACKAGE_FLOORS:
        table[f"package floor: import {packages}"] = [python, "-c", f"import {packages}"]
    for module in modules:
        table[f"import {module}"] = [python, "-c", f"import {module}"]
    return table


def seconds(argv: list[str], root: Path) -> float | None:
    """Wall seconds of one run of ``argv`` in ``root``, or None when it fails."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=root, env=environment(root), capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    return elapsed if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each row (the median is shown)")
    parser.add_argument("--before", type=Path, help="another checkout, measured side by side")
    parser.add_argument(
        "--match", default="", help="only the rows whose label matches this regular expression"
    )
    args = parser.parse_args()
    library = command_paths("recyclelora.cli.main:app")
    stages = command_paths("pipeline.cli:app")
    modules = sorted(
        f"pipeline.stages.{path.stem}" for path in (ROOT / "pipeline" / "stages").glob("[a-z]*.py")
    )
    trees = {"after": ROOT} if args.before is None else {"before": args.before.resolve(), "after": ROOT}
    argvs = {name: rows(root, library, stages, modules) for name, root in trees.items()}
    samples: dict[str, dict[str, list[float | None]]] = {name: {} for name in trees}
    labels = [label for label in argvs["after"] if re.search(args.match, label)]
    for repeat in range(args.repeats):
        for label in labels:
            for name, root in trees.items():  # interleaved, so machine load hits both alike
                samples[name].setdefault(label, []).append(seconds(argvs[name][label], root))
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    def median(name: str, label: str) -> float | None:
        values = samples[name][label]
        return None if None in values else statistics.median(values)  # type: ignore[type-var]

    table = Table(title=f"start-up, median of {args.repeats} run(s) in fresh processes (seconds)")
    table.add_column("command")
    for name in trees:
        table.add_column(name, justify="right")
    table.add_column("target")
    table.add_column("met")
    for label in labels:
        values = [median(name, label) for name in trees]
        is_help = label.startswith(("recyclelora-cli", "python -m pipeline"))
        after = values[-1]
        met = "" if not is_help or after is None else ("yes" if after < TARGET_S else "NO")
        table.add_row(
            label,
            *("failed" if v is None else f"{v:.2f}" for v in values),
            f"< {TARGET_S:g}" if is_help else "",
            met,
        )
    Console(width=140).print(table)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; trees: "
        + ", ".join(f"{name} {root}" for name, root in trees.items())
    )


if __name__ == "__main__":
    main()
