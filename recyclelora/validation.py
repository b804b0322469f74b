"""Config values checked in one place: each dataclass field's value against its type hint and the rules its
metadata declares, for configs read from YAML (:mod:`recyclelora.config`) and built in Python alike.

A field declares its rules once, beside its help: ``field(default=1, metadata={"help": ..., "ge": 1})``.
Rule keys are the bounds ``ge``, ``gt``, ``le`` and ``lt`` (applied to a number, or to every number of a
tuple) and ``choices`` (the allowed values). A config's ``__post_init__`` calls :func:`validate_fields`; its
cross-field rules stay there. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from recyclelora.errors import InvalidInputError

#: Bound keys of a field's metadata -> (the test a number must pass, the symbol shown in messages).
BOUNDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


def validate_fields(config: Any, prefix: str | None = None) -> None:
    """Raise a ValueError for the first field of dataclass ``config`` whose value does not have the field's
    type or breaks the rules of its metadata, naming ``<prefix>.<field>`` (``prefix``: the class name by
    default), what is allowed and the value."""
    hints = _type_hints(type(config))
    for field in dataclasses.fields(config):
        where = f"{prefix or type(config).__name__}.{field.name}"
        check_value(getattr(config, field.name), hints[field.name], where, field.metadata)


def check_value(value: Any, hint: Any, where: str, rules: Mapping[str, Any] | None = None) -> None:
    """Raise ``ValueError("<where> must be <what is allowed>, got <value>")`` unless ``value`` has type
    ``hint`` and passes ``rules`` (the module docstring's keys; others, such as ``help``, are ignored)."""
    rules = rules or {}
    bounds = {key: rules[key] for key in BOUNDS if key in rules}
    choices = rules.get("choices")
    if (
        accepts(hint, value)
        and (choices is None or value is None or value in choices)
        and all(BOUNDS[key][0](number, limit) for number in _numbers(value) for key, limit in bounds.items())
    ):
        return
    allowed = " or ".join(_allowed(option, bounds, choices) for option in union_options(hint))
    raise InvalidInputError(f"{where} must be {allowed}, got {value!r}")


def accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` has type ``hint``; an int is a float, a bool is not a number, a list is a tuple (as
    YAML gives it). Hints other than scalars, literals, tuples, dicts and their unions accept anything."""
    options = union_options(hint)
    if len(options) > 1:
        return any(accepts(option, value) for option in options)
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
            return all(accepts(args[0], item) for item in value)
        return len(args) == len(value) and all(map(accepts, args, value))
    if origin is dict:
        return isinstance(value, dict) and all(
            accepts(args[0], key) and accepts(args[1], item) for key, item in value.items()
        )
    return True


def describe(hint: Any) -> str:
    """What a value of type ``hint`` looks like in YAML, for error messages."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    options = union_options(hint)
    if len(options) > 1:
        return " or ".join(map(describe, options))
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} ({', '.join(map(describe, args))})"
    if origin is dict:
        return f"a mapping of {describe(args[0])} to {describe(args[1])}"
    return getattr(hint, "__name__", str(hint))


def union_options(hint: Any) -> tuple[Any, ...]:
    """The members of a union hint (``int | None`` -> ``(int, NoneType)``); any other hint alone."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if union else (hint,)


def _allowed(option: Any, bounds: Mapping[str, Any], choices: Any) -> str:
    """What a value of the non-union hint ``option`` must be under ``bounds`` and ``choices``."""
    if option is type(None):
        return describe(option)
    if choices is not None:
        return f"one of {list(choices)}"
    if not bounds:
        return describe(option)
    return f"{describe(option)}{', each' if typing.get_origin(option) is tuple else ''} {_range(bounds)}"


def _range(bounds: Mapping[str, Any]) -> str:
    """``>= 1``, or ``in (0, 1]`` for a lower and an upper bound."""
    lower = [key for key in ("ge", "gt") if key in bounds]
    upper = [key for key in ("le", "lt") if key in bounds]
    if lower and upper:
        low, high = lower[0], upper[0]
        return f"in {'[' if low == 'ge' else '('}{bounds[low]}, {bounds[high]}{']' if high == 'le' else ')'}"
    return " and ".join(f"{BOUNDS[key][1]} {limit}" for key, limit in bounds.items())


def _numbers(value: Any) -> Iterator[Any]:
    """The numbers of ``value``: itself, or the items of a list or tuple (bools are not numbers)."""
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            yield item


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of ``cls``, computed once per class."""
    return typing.get_type_hints(cls)
