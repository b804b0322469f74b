"""Presets composed from bases (``_base_``): own keys over the bases', free-form mappings replaced whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.presets import BASES_DIR, available_presets, read_preset
from recyclelora.config import ParamsError

PROJECT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_preset_is_its_bases_with_its_own_keys_over_them(tmp_path: Path) -> None:
    presets = tmp_path / "presets"
    _write(presets / BASES_DIR / "root.yaml", "train: {lr: 0.1, iterations: 10}\ndata: {subset: {a: 1, b: 2}}\n")
    _write(presets / BASES_DIR / "mid.yaml", "_base_: root\ntrain: {iterations: 20}\n")
    preset = _write(presets / "p.yaml", "_base_: [mid]\ntrain: {lr: 0.5}\ndata: {subset: {c: 3}}\n")
    assert read_preset(preset) == {"train": {"lr": 0.5, "iterations": 20}, "data": {"subset": {"c": 3}}}
    assert available_presets(tmp_path / "params.yaml") == ["p"]  # bases are not presets of their own


def test_unknown_and_cyclic_bases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="names the base 'nope'"):
        read_preset(_write(tmp_path / "p.yaml", "_base_: nope\n"))
    _write(tmp_path / BASES_DIR / "a.yaml", "_base_: b\n")
    _write(tmp_path / BASES_DIR / "b.yaml", "_base_: a\n")
    with pytest.raises(ParamsError, match="cycle"):
        read_preset(_write(tmp_path / "q.yaml", "_base_: a\n"))


def test_paper_settings_differ_from_their_base_only_where_the_paper_does() -> None:
    base = read_preset(PROJECT / "presets" / BASES_DIR / "paper.yaml")
    assert read_preset(PROJECT / "presets" / "paper-g2cbm.yaml") == base
    c = read_preset(PROJECT / "presets" / "paper-c2bm.yaml")
    assert c["model"]["adapter"] == base["model"]["adapter"] | {"rank_sub": 2}
    assert "gta5" not in c["datasets"]["real"] and c["data"]["subset"] == {}
    for name in ("paper-gs2cbm", "paper-gsu2cbm"):
        setting = read_preset(PROJECT / "presets" / f"{name}.yaml")
        assert setting["data"]["transform"] == base["data"]["transform"] | {"pad_at": "after_normalize"}
        assert setting["model"] == base["model"] and setting["train"] == base["train"]


def test_check_names_each_bad_file_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """``python -m pipeline check``: params.yaml and every preset over it, the model name asked of timm."""
    from pipeline.cli import app
    from tests.cli import runner

    params = tmp_path / "params.yaml"
    params.write_text((PROJECT / "params.yaml").read_text())
    _write(tmp_path / "presets" / "fine.yaml", "train: {lr: 0.001}\n")
    result = runner.invoke(app, ["check", "--params", str(params)])
    assert result.exit_code == 0 and "and its 1 presets are valid" in " ".join(result.stdout.split()), result.output

    _write(tmp_path / "presets" / "typo.yaml", "train: {lrr: 0.001}\n")
    _write(tmp_path / "presets" / "unknown_model.yaml", "model: {backbone: {name: vit_smal_patch14_dinov2, weights: hub}}\n")
    before = params.read_text()
    result = runner.invoke(app, ["check", "--params", str(params)])
    lines = [" ".join(line.split()) for line in result.stderr.split("error: ")[1:]]  # rich wraps long lines
    assert result.exit_code == 1 and len(lines) == 2, result.output
    assert lines[0].startswith("preset typo: preset key 'train.lrr' is not in params.yaml"), lines
    assert lines[1].startswith("preset unknown_model: model.backbone.name='vit_smal_patch14_dinov2'"), lines
    assert params.read_text() == before
