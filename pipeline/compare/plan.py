"""What the comparison runs: the methods (each a set of params overrides) and their labels' order, the seeds,
the stages each experiment runs, the reference method (RecycleLoRA) and the training-budget curve's methods and
budgets; a preset turned into ``dvc exp run -S`` overrides, and the experiments ``<prefix>-<method>-s<seed>``
with their ``dvc exp run --queue`` commands. Nothing here runs or reads anything but the preset file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.presets import read_preset
from pipeline.sweep import queue_command
from pipeline.sweep.grid import Experiment
from recyclelora.adapters.initialisers import INITIALISERS
from recyclelora.errors import InvalidInputError

#: Params overrides of each method: the two backbone baselines (they keep the default init, unused), then every
#: adapter initialiser, the single-adapter baselines first.
METHODS: dict[str, dict[str, str]] = {
    "frozen": {"model.tuning": "frozen"},
    "full": {"model.tuning": "full"},
} | {
    name: {"model.tuning": "adapters", "model.adapter.init": name}
    for name in sorted(INITIALISERS, key=lambda name: INITIALISERS[name].layout != "single")
}
SEEDS: tuple[int, ...] = (0, 1, 2)
TARGET_STAGES: tuple[str, ...] = ("evaluate", "analyze")
#: The method every other one is compared with (RecycleLoRA).
REFERENCE = "rrqr"
#: The training-budget curve: its methods, budgets (``train.iterations``) and the param that sets them.
CURVE_METHODS: tuple[str, ...] = ("lora", REFERENCE)
CURVE_STEPS: tuple[int, ...] = (60, 200, 600)
STEPS_KEY = "train.iterations"


def override_value(value: Any) -> str:
    """A params value in the override syntax of ``dvc exp run -S`` (Hydra): ``null``, ``true``, ``1e-05``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    raise InvalidInputError(
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


def method_experiments(
    methods: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], prefix: str
) -> list[Experiment]:
    """One experiment ``<prefix>-<method>-s<seed>`` per method and seed: ``overrides``, the method's, the seed."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise InvalidInputError(f"unknown method(s) {unknown}: choose from {list(METHODS)}")
    return [
        Experiment(
            f"{prefix}-{method}-s{seed}",
            (*overrides, *(f"{k}={v}" for k, v in METHODS[method].items()), f"base.seed={seed}"),
        )
        for method in methods
        for seed in seeds
    ]


def queue_commands(
    methods: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], prefix: str
) -> list[list[str]]:
    """One ``dvc exp run --queue`` command per method and seed."""
    return [queue_command(e, TARGET_STAGES) for e in method_experiments(methods, seeds, overrides, prefix)]


def budget_overrides(preset: Path | None, steps: int | None = None) -> list[str]:
    """The ``-S`` overrides of ``preset`` (none without one), with ``train.iterations=steps`` if given."""
    values = read_preset(preset) if preset else {}
    if steps is not None:
        values["train"] = {**values.get("train", {}), "iterations": steps}
    return preset_overrides(values)
