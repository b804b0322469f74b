"""``params.yaml`` -> typed, validated run configuration (every key checked before any work starts)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from recyclelora.data.pixel_limits import DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS
from recyclelora.data.transform_config import EvalTransformConfig, ResizeConfig
from recyclelora.errors import InvalidInputError
from recyclelora.models.config import ModelConfig
from recyclelora.train.config import DataConfig, TrainConfig
from recyclelora.validation import accepts, describe, union_options, validate_fields


class ParamsError(InvalidInputError):
    """A params file names an unknown key or holds a value its field refuses."""


@dataclass(frozen=True)
class EvalConfig:
    """Stage ``evaluate``: every target domain, one confusion matrix each; the score is the mean of their
    mIoU."""

    targets: tuple[str, ...] = field(
        default=(), metadata={"help": "manifests of the target domains, one dataset each"}
    )
    crop: int = field(
        default=512,
        metadata={"help": "sliding-window size, e.g. the training crop's (the paper: 512)", "ge": 1},
    )
    stride: int = field(default=341, metadata={"help": "sliding-window stride (the paper: 341)", "ge": 1})
    whole: bool = field(default=False, metadata={"help": "whole-image inference instead of sliding windows"})
    resize: dict[str, ResizeConfig] = field(
        default_factory=dict,
        metadata={
            "help": "per-target resize replacing data.val_transform's, by manifest stem, one of size: "
            "[w, h], short_edge: n or fit: [long, short] (largest size inside, aspect kept); e.g. "
            "{mapillary_val: {fit: [2048, 1024]}}, as the paper presets set"
        },
    )
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata={
            "help": "largest image or label read (width x height), refused from its header",
            "ge": 1,
            "le": PILLOW_MAX_PIXELS,
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        validate_fields(self, "eval")
        if self.stride > self.crop:
            raise InvalidInputError(f"eval.stride must be <= crop={self.crop}, got {self.stride!r}")
        stems = [Path(target).stem for target in self.targets]
        unknown = sorted(set(self.resize) - set(stems))
        if unknown:
            raise InvalidInputError(f"eval.resize names {unknown}, which are not targets: the targets are {stems}")

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
    options = union_options(hint)
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
    if not accepts(hint, value):
        suffix = f" ({help})" if help else ""
        raise ParamsError(f"{where} is {value!r}, but it must be {describe(hint)}{suffix}")
    if isinstance(value, list) and any(typing.get_origin(option) is tuple for option in options):
        return tuple(value)
    return value


def read_params(path: Path) -> dict[str, Any]:
    """``params.yaml`` parsed: its mapping of sections (empty for an empty file)."""
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return raw


def run_config(
    raw: dict[str, Any], path: Path, sections: tuple[str, ...] = ("data", "model", "train", "eval")
) -> RunConfig:
    """The ``sections`` of ``raw`` (parsed from ``path``, named in errors) validated; ``raw`` stays as parsed.
    ``base.seed`` seeds training unless ``train.seed`` is given."""
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ParamsError(f"params.base must be a mapping of keys to values, got {type(base).__name__}")
    run = {key: raw[key] for key in sections if key in raw}
    if base.get("seed") is not None and isinstance(train := run.get("train", {}), dict):
        run["train"] = {"seed": base["seed"], **train}
    if "data" not in run:
        raise ParamsError(f"{path} has no 'data' section: it must list at least data.train")
    return build_config(RunConfig, run, "params")


def load_params(
    path: str | Path, sections: tuple[str, ...] = ("data", "model", "train", "eval")
) -> RunConfig:
    """Read ``params.yaml`` and validate its ``sections`` (:func:`read_params`, then :func:`run_config`)."""
    path = Path(path)
    return run_config(read_params(path), path, sections)
