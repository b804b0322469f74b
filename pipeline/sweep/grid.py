"""A sweep's grid and the stages its experiments share, from ``-S`` options and dvc.yaml.

``-S KEY=V1,V2`` is ``dvc exp run``'s override syntax: a comma list sweeps the key, several ``-S`` expand to the
cross product (in the order given, the last key varying fastest).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from recyclelora.errors import InvalidInputError

#: What an experiment name may hold (a Git ref component DVC accepts), anything else becomes ``_``.
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.+-]+")


class Experiment(NamedTuple):
    """One point of the grid: its DVC experiment name and its ``key=value`` overrides."""

    name: str
    overrides: tuple[str, ...]


def parse_set(option: str) -> tuple[str, list[str]]:
    """``"KEY=V1,V2"`` -> ``("KEY", ["V1", "V2"])``; a ValueError naming the option if it is not one."""
    key, equals, values = option.partition("=")
    items = values.split(",")
    if not equals or not key.strip() or not all(item.strip() for item in items):
        raise InvalidInputError(
            f"-S {option!r} is not KEY=VALUE or KEY=V1,V2,...: e.g. -S model.adapter.init=lora,rrqr"
        )
    return key.strip(), [item.strip() for item in items]


def expand(sets: Sequence[str], prefix: str) -> list[Experiment]:
    """The cross product of the ``-S`` options, each point named ``<prefix>-<its swept values>``."""
    parsed = [parse_set(option) for option in sets]
    keys = [key for key, _ in parsed]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise InvalidInputError(f"-S sets {repeated} more than once: give each key once, its values comma-separated")
    swept = [index for index, (_, values) in enumerate(parsed) if len(values) > 1]
    grid = []
    for values in itertools.product(*(values for _, values in parsed)):
        label = "-".join(_NAME_CHARACTERS.sub("_", values[index]) for index in swept)
        name = f"{prefix}-{label}" if label else prefix
        grid.append(
            Experiment(name, tuple(f"{key}={value}" for key, value in zip(keys, values, strict=True)))
        )
    names = [experiment.name for experiment in grid]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"the swept values give the same experiment name twice ({names}): use other values")
    return grid


def _keys_overlap(key: str, param: str) -> bool:
    """Whether setting ``key`` changes params entry ``param`` (one is the other or holds it)."""
    key = key.split(":", 1)[-1]  # DVC's ``file:key``
    return key == param or key.startswith(f"{param}.") or param.startswith(f"{key}.")


def _paths(entries: Iterable[Any]) -> list[str]:
    """The paths of a stage's ``deps`` or ``outs`` (an out may be ``{path: options}``)."""
    return [path for entry in entries for path in (entry if isinstance(entry, Mapping) else [entry])]


def _under(path: str, outs: Iterable[str]) -> bool:
    return any(path == out or path.startswith(f"{out}/") or out.startswith(f"{path}/") for out in outs)


def shared_stages(dvc_yaml: Path, keys: Iterable[str], targets: Sequence[str] = ()) -> list[str]:
    """The stages of ``dvc_yaml`` (in its order) that ``targets`` (default: all) need and that give the same
    outputs for every experiment: none of their params, nor those of a stage upstream, is a swept ``key``."""
    from recyclelora.config import read_yaml  # it loads torch: not for `--help`

    stages: dict[str, dict[str, Any]] = (read_yaml(dvc_yaml) or {}).get("stages") or {}
    outs = {
        name: _paths(stage.get("outs") or []) + _paths(stage.get("metrics") or [])
        for name, stage in stages.items()
    }
    upstream = {
        name: {
            other
            for other in stages
            if other != name and any(_under(dep, outs[other]) for dep in _paths(stage.get("deps") or []))
        }
        for name, stage in stages.items()
    }
    keys = list(keys)
    changed = {
        name for name, stage in stages.items()
        if any(_keys_overlap(key, param) for key in keys for param in stage.get("params") or [] if isinstance(param, str))
    }  # fmt: skip
    needed = set(targets or stages)
    while True:  # close both sets over the stage graph
        grown = changed | {name for name in stages if upstream[name] & changed}
        wider = needed | set().union(*(upstream[name] for name in needed))
        if grown == changed and wider == needed:
            break
        changed, needed = grown, wider
    return [name for name in stages if name in needed and name not in changed]


def uncached_outs(dvc_yaml: Path, stages: Iterable[str]) -> list[str]:
    """The outputs and metrics of ``stages`` that DVC does not cache (``cache: false``)."""
    from recyclelora.config import read_yaml

    defined = (read_yaml(dvc_yaml) or {}).get("stages") or {}
    return [
        path
        for stage in stages
        for entry in [*(defined[stage].get("outs") or []), *(defined[stage].get("metrics") or [])]
        if isinstance(entry, Mapping)
        for path, options in entry.items()
        if (options or {}).get("cache") is False
    ]
