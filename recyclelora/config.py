"""``params.yaml`` -> typed, validated run configuration (every key checked before any work starts)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from recyclelora.data.transforms import EvalTransformConfig, ResizeConfig
from recyclelora.models.build import ModelConfig
from recyclelora.train.config import DataConfig, TrainConfig


class ParamsError(ValueError):
    """A params file names an unknown key or holds a value its field refuses."""


@dataclass(frozen=True)
class EvalConfig:
    """How the target domains are scored (the protocol: sliding 512 x 512 windows, stride 341)."""

    targets: tuple[str, ...] = field(default=(), metadata={"help": "target manifests, one dataset each"})
    crop: int = field(default=512, metadata={"help": "sliding-window size"})
    stride: int = field(default=341, metadata={"help": "sliding-window stride"})
    whole: bool = field(default=False, metadata={"help": "whole-image inference instead of sliding windows"})
    resize: dict[str, ResizeConfig] = field(
        default_factory=dict,
        metadata={"help": "per-target resize rule by manifest stem, replacing data.val_transform's for it"},
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        if not 0 < self.stride <= self.crop:
            raise ValueError(f"eval.stride must be in (0, crop={self.crop}], got {self.stride!r}")
        stems = [Path(target).stem for target in self.targets]
        unknown = sorted(set(self.resize) - set(stems))
        if unknown:
            raise ValueError(f"eval.resize names {unknown}, which are not targets: the targets are {stems}")

    def target_transform(self, target: str | Path, transform: EvalTransformConfig) -> EvalTransformConfig:
        """``transform`` with the resize rule of ``resize[<stem of target>]`` when that target has one."""
        rule = self.resize.get(Path(target).stem)
        if rule is None:
            return transform
        return dataclasses.replace(transform, size=rule.size, short_edge=rule.short_edge, fit=rule.fit)


@dataclass(frozen=True)
class RunConfig:
    """One run: data, model, training and evaluation settings."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def read_yaml(path: str | Path) -> Any:
    """A YAML file parsed as YAML 1.2, as DVC parses ``params.yaml``: ``lr: 1e-3`` is a number (PyYAML's YAML
    1.1 reads it as a string). A syntax error raises :class:`ParamsError` naming the file, line and column."""
    path = Path(path)
    try:
        return YAML(typ="safe", pure=True).load(path.read_text())
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise ParamsError(f"{where}: invalid YAML: {error.problem or error.context}") from None
    except YAMLError as error:
        raise ParamsError(f"{path}: invalid YAML: {error}") from None


def build_config(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, recursing into nested dataclass fields.

    ``where`` names the mapping in errors (``params.train``): unknown keys and refused values raise
    :class:`ParamsError` naming the key and, for unknown keys, the allowed ones.
    """
    if not isinstance(data, dict):
        raise ParamsError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"unknown key(s) {[f'{where}.{k}' for k in unknown]}: allowed keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ParamsError(f"{where}: {error}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    for option in options:
        if dataclasses.is_dataclass(option):
            return value if value is None and type(None) in options else build_config(option, value, where)
        if typing.get_origin(option) is tuple and isinstance(value, list):
            return tuple(value)
        if typing.get_origin(option) is dict and dataclasses.is_dataclass(typing.get_args(option)[1]):
            if not isinstance(value, dict):
                raise ParamsError(
                    f"{where} must be a mapping of names to settings, got {type(value).__name__}"
                )
            return {
                key: build_config(typing.get_args(option)[1], item, f"{where}.{key}")
                for key, item in value.items()
            }
    return value


def load_params(
    path: str | Path, sections: tuple[str, ...] = ("data", "model", "train", "eval")
) -> RunConfig:
    """Read ``params.yaml`` and validate it. ``base.seed`` seeds training unless ``train.seed`` is given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    seed = (raw.get("base") or {}).get("seed")
    run = {key: raw[key] for key in sections if key in raw}
    if seed is not None:
        run.setdefault("train", {}).setdefault("seed", seed)
    if "data" not in run:
        raise ParamsError(f"{path} has no 'data' section: it must list at least data.train")
    return build_config(RunConfig, run, "params")
