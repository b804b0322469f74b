"""Imports on first use: PEP 562 lazy attributes for package ``__init__`` modules.

``import recyclelora`` (or ``recyclelora.adapters``) then costs nothing until a name is used, so the CLI's
``--help`` and light submodules (``recyclelora.adapters.config``) do not pull in torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def names_from(module: str, names: Iterable[str]) -> dict[str, str]:
    """``{name: module}`` for each of ``names``."""
    return dict.fromkeys(names, module)


def lazy_attributes(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` serving each ``names[name]`` module's ``name`` on first use."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
