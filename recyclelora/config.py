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
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}", fields[name].metadata.get("help"))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ParamsError(f"{where}: {error}") from None


def _convert(hint: Any, value: Any, where: str, help: str | None = None) -> Any:
    """``value`` as field type ``hint`` wants it: nested dataclasses built, lists as tuples; a value of the
    wrong type raises :class:`ParamsError` naming the key, the value, what is allowed and the field's help."""
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    for option in options:
        if dataclasses.is_dataclass(option):
            return value if value is None and type(None) in options else build_config(option, value, where)
        if typing.get_origin(option) is dict and dataclasses.is_dataclass(typing.get_args(option)[1]):
            if not isinstance(value, dict):
                raise ParamsError(
                    f"{where} must be a mapping of names to settings, got {type(value).__name__}"
                )
            return {
                key: build_config(typing.get_args(option)[1], item, f"{where}.{key}")
                for key, item in value.items()
            }
    if not any(_accepts(option, value) for option in options):
        allowed = " or ".join(map(_describe, options))
        raise ParamsError(f"{where} is {value!r}, but it must be {allowed}" + (f" ({help})" if help else ""))
    if isinstance(value, list) and any(typing.get_origin(option) is tuple for option in options):
        return tuple(value)
    return value


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (as YAML gives it) has type ``hint``; an int is a float, a bool is not a number."""
    if hint in (bool, int, float, str, type(None)):
        allowed = {float: (int, float), type(None): (type(None),)}.get(hint, (hint,))
        return isinstance(value, allowed) and (hint is bool or not isinstance(value, bool))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(args[0], item) for item in value)
        return len(args) == len(value) and all(map(_accepts, args, value))
    if origin is dict:
        return isinstance(value, dict) and all(
            _accepts(args[0], key) and _accepts(args[1], item) for key, item in value.items()
        )
    return True  # Any and other hints: the config's own checks decide


def _describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like in YAML, for error messages."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} ({', '.join(map(_describe, args))})"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    return getattr(hint, "__name__", str(hint))


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
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ParamsError(f"params.base must be a mapping of keys to values, got {type(base).__name__}")
    run = {key: raw[key] for key in sections if key in raw}
    if base.get("seed") is not None and isinstance(run.setdefault("train", {}), dict):
        run["train"].setdefault("seed", base["seed"])
    if "data" not in run:
        raise ParamsError(f"{path} has no 'data' section: it must list at least data.train")
    return build_config(RunConfig, run, "params")
