"""Presets: named overlays written over ``params.yaml`` (``python -m pipeline preset NAME``).

A preset is a YAML file ``presets/<NAME>.yaml`` beside ``params.yaml`` holding some of its keys. Every key
must already exist in ``params.yaml`` (a typo is an error, not a new key); mappings are merged key by key,
except the free-form ones (:data:`FREE_FORM`), which a preset replaces whole like any other value. The result
is validated as a whole before ``params.yaml`` is replaced (atomically) by its text as
:func:`pipeline.params_text.render_params` writes it: every key commented with its config field's help.

Presets are composed, as mmseg's configs are: ``_base_: NAME`` (or a list of names, merged in order) starts a
preset from ``presets/_base/NAME.yaml`` (which may name bases of its own), and the preset's own keys are merged
over it by the same rules (:func:`read_preset`). The four paper settings are one base and four small overlays.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.params import load_pipeline_params
from pipeline.params_text import flow_yaml, render_params
from recyclelora.config import ParamsError, read_yaml
from recyclelora.errors import UserError
from recyclelora.io import atomic_path

PRESETS_DIR = "presets"
#: The folder of base presets, inside :data:`PRESETS_DIR`, and the key that names them.
BASES_DIR = "_base"
BASE_KEY = "_base_"
#: Mappings whose keys are data, not settings: a preset gives them whole.
FREE_FORM: frozenset[str] = frozenset(
    {"datasets.real", "datasets.custom", "data.subset", "model.backbone.model_kwargs", "eval.resize"}
)


def available_presets(params_path: str | Path) -> list[str]:
    """Names of the presets in the ``presets/`` folder beside ``params_path``."""
    folder = Path(params_path).resolve().parent / PRESETS_DIR
    return sorted(path.stem for path in folder.glob("*.yaml"))


def preset_file(params_path: str | Path, name: str) -> Path:
    """``presets/<name>.yaml`` beside ``params_path``, or ``name`` itself if it is a YAML file."""
    given = Path(name)
    if given.suffix in (".yaml", ".yml") and given.is_file():
        return given
    path = Path(params_path).resolve().parent / PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no preset {name!r}: choose one of {available_presets(params_path)} or give a .yaml file"
        )
    return path


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``overlay`` over ``base``: mappings merged key by key, free-form ones and every other value replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping) and f"{prefix}{key}" not in FREE_FORM:
            merged[key] = _merge(current, value, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def read_preset(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The keys of the preset file ``path`` with those of its bases (``_base_``) under them."""
    path = Path(path).resolve()
    if path in _seen:
        raise ParamsError(f"preset bases form a cycle: {' -> '.join(p.name for p in (*_seen, path))}")
    preset = read_yaml(path) or {}
    if not isinstance(preset, Mapping):
        raise ParamsError(f"preset {path} must be a mapping of params.yaml sections")
    bases = preset.get(BASE_KEY) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        folder = path.parent if path.parent.name == BASES_DIR else path.parent / BASES_DIR
        file = folder / f"{base}.yaml"
        if not file.is_file():
            raise FileNotFoundError(f"preset {path.name} names the base {base!r}, but {file} does not exist")
        merged = _merge(merged, read_preset(file, (*_seen, path)))
    return _merge(merged, {key: value for key, value in preset.items() if key != BASE_KEY})


def _overlay(target: dict[str, Any], preset: Mapping[str, Any], prefix: str, changed: list[str]) -> None:
    for key, value in preset.items():
        name = f"{prefix}{key}"
        if key not in target:
            raise ParamsError(
                f"preset key {name!r} is not in params.yaml: "
                f"allowed keys are {[f'{prefix}{k}' for k in target]}"
            )
        current = target[key]
        if isinstance(value, Mapping) and isinstance(current, Mapping) and name not in FREE_FORM:
            _overlay(current, value, f"{name}.", changed)
        elif current != value:
            target[key] = value
            changed.append(name)


def _overlaid(params_path: Path, name: str) -> tuple[dict[str, Any], list[str]]:
    """params.yaml's values with preset ``name`` written over them, and the keys it changed."""
    preset = read_preset(preset_file(params_path, name))
    values = read_yaml(params_path) or {}
    if not isinstance(values, dict):
        raise ParamsError(f"{params_path} must hold a mapping of sections")
    changed: list[str] = []
    _overlay(values, preset, "", changed)
    return values, changed


def _rendered(values: dict[str, Any], check: Callable[[Path], object]) -> str:
    """params.yaml's text holding ``values``, once ``check`` accepts them (read from a plain dump: rendering
    refuses unknown keys, which ``check`` reports as a user error)."""
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "params.yaml"
        plain.write_text(flow_yaml(values) + "\n", encoding="utf-8")
        check(plain)
    return render_params(values)


def apply_preset(params_path: str | Path, name: str) -> list[str]:
    """Write preset ``name`` over ``params_path``, every key commented with its help
    (:func:`~pipeline.params_text.render_params`); returns the dotted keys whose value changed.

    Nothing is written when a preset key is unknown or the resulting params do not validate.
    """
    params_path = Path(params_path)
    values, changed = _overlaid(params_path, name)
    text = _rendered(values, load_pipeline_params)
    with atomic_path(params_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        load_pipeline_params(tmp)
    return changed


def check_presets(
    params_path: str | Path, check: Callable[[Path], object] = load_pipeline_params
) -> dict[str, str]:
    """``{preset: problem}`` for each preset beside ``params_path`` whose params, written over it, ``check``
    refuses with a user error (nothing is written)."""
    params_path = Path(params_path)
    problems: dict[str, str] = {}
    for name in available_presets(params_path):
        try:
            _rendered(_overlaid(params_path, name)[0], check)
        except (FileNotFoundError, UserError) as error:
            problems[name] = str(error)
    return problems
