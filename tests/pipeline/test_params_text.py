"""params.yaml's comments are the config fields' help (pipeline/params_text.py): the committed file is exactly
what :func:`render_params` writes from its values, every key of it and of every preset has a help text, and the
layout rules hold (comment column, wrapping, block lists, null sections of a dataclass, unknown keys)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from pipeline.params_text import COMMENT_COLUMN, WIDTH, heading, render_params, section_configs, write_params
from pipeline.presets import _overlaid, available_presets
from recyclelora.config import ParamsError, read_yaml
from recyclelora.validation import union_options

PROJECT = Path(__file__).resolve().parents[2]
PARAMS = PROJECT / "params.yaml"
REGENERATE = "python -m pipeline check --write-comments"


def _load(text: str) -> Any:
    """``text`` parsed as :func:`~recyclelora.config.read_yaml` parses a file (YAML 1.2)."""
    return YAML(typ="safe", pure=True).load(text)


def test_params_yaml_is_its_values_rendered_with_the_fields_help() -> None:
    text = PARAMS.read_text()
    expected = render_params(read_yaml(PARAMS))
    diff = "".join(
        difflib.unified_diff(text.splitlines(True), expected.splitlines(True), "params.yaml", "rendered")
    )
    assert text == expected, (
        f"params.yaml differs from what its values and the config fields' help render: run `{REGENERATE}` "
        f"(and commit params.yaml)\n{diff[:4000]}"
    )


def _undocumented(config: type, values: dict[str, Any], where: str) -> list[str]:
    """Dotted keys of ``values`` (recursing into nested configs) whose field of ``config`` has no help."""
    fields = {item.name: item for item in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    missing = []
    for key, value in values.items():
        if not str(fields[key].metadata.get("help") or "").strip():
            missing.append(f"{where}.{key}")
        nested = next((o for o in union_options(hints[key]) if dataclasses.is_dataclass(o)), None)
        if nested is not None and isinstance(value, dict):
            missing += _undocumented(nested, value, f"{where}.{key}")
    return missing


@pytest.mark.parametrize("preset", [None, *available_presets(PARAMS)])
def test_every_key_of_params_yaml_and_of_every_preset_over_it_has_a_help_text(preset: str | None) -> None:
    values = read_yaml(PARAMS) if preset is None else _overlaid(PARAMS, preset)[0]
    configs = section_configs()
    missing = [m for name, section in values.items() for m in _undocumented(configs[name], section, name)]
    assert not missing, f"give these fields metadata={{'help': ...}}, then run `{REGENERATE}`: {missing}"
    assert all(heading(configs[name]) for name in values)


def _block(text: str, key: str) -> list[str]:
    """The line of ``key:`` and its comment's continuation lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"{key}:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * COMMENT_COLUMN + "# "):
        end += 1
    return lines[start:end]


def test_comments_sit_at_their_column_and_wrap_within_the_width() -> None:
    values = {"data": {"train": ["a.parquet"], "subset": {}}, "train": {"weight_decay_end": 1e-5}}
    text = render_params(values)
    subset = _block(text, "subset")  # a help of three lines
    assert len(subset) == 3 and subset[0].startswith("  subset: {} ")
    assert all(line.index("#") == COMMENT_COLUMN for line in subset)
    assert all(len(line) <= WIDTH for line in text.splitlines())
    long = _block(render_params({"data": {"train": ["data/prepared/" + "x" * 40 + ".parquet"]}}), "train")[0]
    assert "parquet]  # training manifests" in long  # two spaces after a line reaching past the column
    assert "weight_decay_end: 1.0e-05 " in text and _load(text)["train"]["weight_decay_end"] == 1e-5
    assert (
        text.startswith("# Settings of the DVC pipeline")
        and "\n# What training reads (stage `train`)" in text
    )
    assert _load(text) == values


def test_a_list_too_long_for_one_line_is_written_in_block_style() -> None:
    short = ["data/prepared/a_val.parquet", "data/prepared/b_val.parquet"]
    long = [f"data/prepared/target{i}_val.parquet" for i in range(4)]
    text = render_params({"eval": {"targets": short, "crop": 512}})
    assert "  targets: [data/prepared/a_val.parquet, data/prepared/b_val.parquet]  # manifests" in text
    text = render_params({"eval": {"targets": long, "crop": 512}})
    assert _block(text, "targets")[0].startswith("  targets:  ")
    assert "\n    - data/prepared/target3_val.parquet\n" in text
    assert _load(text)["eval"] == {"targets": long, "crop": 512}


def test_a_null_dataclass_field_is_written_null_and_a_set_one_as_its_keys() -> None:
    values = {"datasets": {"synth": None, "real": {"gta5": None}}, "model": {"head": {"kind": "light"}}}
    text = render_params(values)
    assert _block(text, "synth")[0].startswith("  synth: null ") and "  real: {gta5: null}  " in text
    assert _block(text, "head")[0].startswith("  head:  ") and "\n    kind: light " in text
    assert _load(text) == values


def test_unknown_sections_and_keys_are_refused() -> None:
    with pytest.raises(ValueError, match=r"train\.lrr"):
        render_params({"train": {"lrr": 0.1}})
    with pytest.raises(ValueError, match=r"model\.adapter\.rank"):
        render_params({"model": {"adapter": {"rank": 4}}})
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trian'\]"):
        render_params({"trian": {"lr": 0.1}})


def test_headings_read_rst_as_markdown_code() -> None:
    class Section:
        """Stage ``data``: see :class:`~recyclelora.config.RunConfig` and :func:`render`.

        Not this paragraph."""

    assert heading(Section) == "Stage `data`: see `RunConfig` and `render`."


def test_write_comments_rewrites_valid_params_from_their_values_only(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    values = {
        "train": {"lr": 1e-5},
        "base": {"seed": 3},
        "data": {"train": ["a.parquet"]},
        "eval": {"targets": ["b"]},
    }
    params.write_text("train: {lr: 1.0e-05}  # old comment\nbase: {seed: 3}\ndata: {train: [a.parquet]}\neval:\n"
                      "  targets: [b]\n")  # fmt: skip
    assert write_params(params) is True
    text = params.read_text()
    assert (
        text == render_params(values)
        and "old comment" not in text
        and text.index("base:") < text.index("train:")
    )
    assert read_yaml(params) == values
    assert write_params(params) is False
    params.write_text("train: {lrr: 0.01}\ndata: {train: [a.parquet]}\n")
    with pytest.raises(ParamsError, match="lrr"):
        write_params(params)
    assert params.read_text() == "train: {lrr: 0.01}\ndata: {train: [a.parquet]}\n"


def test_check_write_comments_regenerates_params_yaml(tmp_path: Path) -> None:
    from pipeline.cli import app
    from tests.cli import runner

    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text().replace("# optimiser steps", "# a stale comment"))
    result = runner.invoke(app, ["check", "--params", str(params), "--write-comments"])
    assert result.exit_code == 0 and "comments rewritten" in result.stdout, result.output
    assert params.read_text() == PARAMS.read_text()
