"""dvc.yaml's code deps are exactly each stage's code: the in-repo import closure of its module, found with ast.
A missing dep would keep a stage from rerunning after an edit that changes its outputs; a surplus one reruns it
after an edit that cannot."""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from importlib.util import resolve_name
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ("recyclelora", "pipeline")
#: In-repo modules that cannot change a stage's outputs, so they are no deps (dvc.yaml's header says so too):
#: tracking.py and mlflow_inputs.py log to MLflow only; dvcfile.py reads dvc.yaml's params lists, part of each
#: stage's definition.
EXEMPT = {"pipeline/tracking.py", "pipeline/mlflow_inputs.py", "pipeline/dvcfile.py"}


def module_file(name: str) -> Path | None:
    """The file of module ``name`` in this repository (``a/b.py`` or ``a/b/__init__.py``), else None."""
    if name.partition(".")[0] not in PACKAGES:
        return None
    path = PROJECT.joinpath(*name.split("."))
    return next((f for f in (path.with_suffix(".py"), path / "__init__.py") if f.is_file()), None)


def with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' ``__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` (function bodies included) but ``if TYPE_CHECKING:`` blocks, which never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            type_checking = isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING")
            stack.extend(child.orelse if type_checking else [child])


def lazy_names(tree: ast.AST) -> dict[str, str]:
    """``{name: module}`` a package serves on first use: its ``names_from("module", (names...))`` calls."""
    table: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "names_from":
            module, names = map(ast.literal_eval, node.args)
            table |= dict.fromkeys(names, module)
    return table


@functools.cache
def parsed(name: str) -> ast.Module:
    return ast.parse(module_file(name).read_text())


@functools.cache
def imports_of(name: str) -> set[str]:
    """Modules that module ``name`` imports (at import time or inside functions), submodules and lazy names
    of ``from package import name`` resolved to the module defining them."""
    file = module_file(name)
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in runtime_nodes(parsed(name)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = resolve_name("." * node.level + (node.module or ""), package)
            found.add(base)
            lazy = lazy_names(parsed(base)) if module_file(base) else {}
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if module_file(submodule) else lazy.get(alias.name, base))
    return found


def import_closure(module: str) -> set[str]:
    """Files (relative to the project) of every in-repo module that importing ``module`` can run."""
    seen: set[str] = set()
    todo = with_parents(module)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo += [parent for found in imports_of(name) for parent in with_parents(found)]
    return {module_file(name).relative_to(PROJECT).as_posix() for name in seen}


def covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(f"{dep.rstrip('/')}/") for dep in deps)


def pipeline_stages() -> dict[str, dict]:
    """The dvc.yaml stages run by ``python -m pipeline <name>``."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    return {
        name: stage
        for name, stage in stages.items()
        if re.match(rf"python -m pipeline {name}\b", " ".join(stage["cmd"].split()))
    }


def test_every_stage_depends_on_the_code_it_imports() -> None:
    closures = {name: import_closure(f"pipeline.stages.{name}") for name in pipeline_stages()}
    assert set(closures) == {"data", "weights", "init", "train", "merge", "evaluate", "export", "package", "analyze"}
    missing = {
        name: sorted(file for file in closures[name] - EXEMPT if not covered(file, stage["deps"]))
        for name, stage in pipeline_stages().items()
    }
    assert not any(missing.values()), (
        "dvc.yaml stages miss code deps (add the files or a folder of them):\n"
        + ("\n".join(f"  {name}: {', '.join(files)}" for name, files in missing.items() if files))
    )
    # each exemption is imported by some stage and stated in dvc.yaml's header
    assert EXEMPT <= set().union(*closures.values())
    header = (PROJECT / "dvc.yaml").read_text().split("\nstages:")[0]
    assert all(module in header for module in EXEMPT)


def code_files(dep: str) -> set[str]:
    """The Python files a code dep names: the file, or every file under the folder."""
    path = PROJECT / dep
    files = path.rglob("*.py") if path.is_dir() else [path]
    return {file.relative_to(PROJECT).as_posix() for file in files}


def test_no_stage_depends_on_code_it_cannot_import() -> None:
    """A code dep is a file of the stage's import closure, or a folder all of whose files are in it."""
    surplus = {}
    for name, stage in pipeline_stages().items():
        closure = import_closure(f"pipeline.stages.{name}")
        code = [dep for dep in stage["deps"] if dep.partition("/")[0] in PACKAGES]
        surplus[name] = sorted(f for dep in code for f in code_files(dep) - closure)
    assert not any(surplus.values()), (
        "dvc.yaml stages depend on code they never import (list the imported files instead of the folder):\n"
        + ("\n".join(f"  {name}: {', '.join(files)}" for name, files in surplus.items() if files))
    )
