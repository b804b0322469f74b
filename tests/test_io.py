"""Atomic files and folders, reproducible safetensors files, dotted keys."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from recyclelora.io import (
    PARTIAL_SUFFIX,
    atomic_dir,
    atomic_path,
    atomic_write_text,
    flatten,
    save_safetensors,
    sha256_file,
)

METADATA = {f"key{i}": f"value {i} é" for i in range(8)}

WRITER = """
import sys, torch
from recyclelora.io import save_safetensors
tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
save_safetensors(tensors, sys.argv[1], {f"key{i}": f"value {i} \\u00e9" for i in range(8)})
"""


def test_atomic_path_leaves_the_target_untouched_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.slow
def test_save_safetensors_is_byte_reproducible_across_processes(tmp_path: Path) -> None:
    # safetensors orders metadata by a per-process random hash: eight keys in one order twice by chance is 1/40320.
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for file in files:
        subprocess.run([sys.executable, "-c", WRITER, str(file)], check=True)
    assert len({sha256_file(file) for file in files}) == 1


def test_save_safetensors_round_trips_tensors_and_metadata(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(3, 5), "n": torch.arange(4)}
    path = save_safetensors(tensors, tmp_path / "sub" / "x.safetensors", METADATA)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == METADATA
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_save_safetensors_without_metadata(tmp_path: Path) -> None:
    path = save_safetensors({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() is None
        assert torch.equal(handle.get_tensor("w"), torch.zeros(2))


def _write_folder(path: Path, files: dict[str, str]) -> None:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)


def _folder(path: Path) -> dict[str, str]:
    return {file.name: file.read_text() for file in path.iterdir()}


def test_atomic_dir_replaces_the_folder_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write_folder(target, {"old.txt": "old", "shared.txt": "old"})
    with atomic_dir(target) as partial:
        assert partial == tmp_path / f"out{PARTIAL_SUFFIX}" and not any(partial.iterdir())
        (partial / "shared.txt").write_text("new")
    assert _folder(target) == {"shared.txt": "new"}  # the old folder's files are gone, not merged
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_leaves_the_old_folder_untouched_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write_folder(target, {"old.txt": "old"})
    with pytest.raises(RuntimeError), atomic_dir(target) as partial:
        (partial / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert _folder(target) == {"old.txt": "old"}
    assert list(tmp_path.iterdir()) == [target]  # no partial folder left


def test_atomic_dir_keep_partial_keeps_the_work_for_the_next_attempt(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target, keep_partial=True) as partial:
        (partial / "step1.txt").write_text("done")
        raise RuntimeError("interrupted")
    assert not target.exists() and _folder(partial) == {"step1.txt": "done"}
    with atomic_dir(target, keep_partial=True) as again:
        assert _folder(again) == {"step1.txt": "done"}
        (again / "step2.txt").write_text("done")
    assert _folder(target) == {"step1.txt": "done", "step2.txt": "done"}
    assert not partial.exists()


def test_flatten_dots_nested_keys_and_keeps_empty_mappings_unless_told() -> None:
    tree = {"train": {"lr": 1e-4, "sizes": [512, 512]}, "subset": {}, "seed": 0}
    assert flatten(tree) == {"train.lr": 1e-4, "train.sizes": [512, 512], "subset": {}, "seed": 0}
    assert flatten(tree, keep_empty=False) == {"train.lr": 1e-4, "train.sizes": [512, 512], "seed": 0}


def test_atomic_files_get_the_permissions_open_would_give_even_from_safetensors(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        save_safetensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors", {"k": "v"})  # safetensors writes 0600
        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(umask)
    for name in ("w.safetensors", "t.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
