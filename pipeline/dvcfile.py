"""The workspace's ``dvc.yaml``, the one place each stage's params keys are listed."""

from __future__ import annotations

from pathlib import Path

from recyclelora.config import read_yaml
from recyclelora.errors import InvalidInputError

DVC_FILE = "dvc.yaml"


def stage_params(stage: str, params_path: str | Path) -> tuple[str, ...]:
    """The ``params:`` keys of ``stage`` in the ``dvc.yaml`` beside ``params_path`` (the DVC workspace's)."""
    path = Path(params_path).with_name(DVC_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a stage runs in a DVC workspace, beside {DVC_FILE}")
    stages = (read_yaml(path) or {}).get("stages") or {}
    if stage not in stages:
        raise InvalidInputError(f"{path} has no stage {stage!r}: its stages are {list(stages)}")
    keys = tuple(stages[stage].get("params") or ())
    if not all(isinstance(key, str) for key in keys):
        raise InvalidInputError(
            f"{path}: stage {stage!r} lists params of another file; list keys of params.yaml only"
        )
    return keys
