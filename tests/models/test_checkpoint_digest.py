"""Checkpoints carry a digest of their tensors: a flipped byte inside a tensor is an error on every read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from recyclelora.io import save_safetensors
from recyclelora.models import Segmentor, merge_checkpoint
from recyclelora.models.checkpoint import DIGEST_KEY, read_tensors, tensor_digest
from tests.cli import save_tiny_checkpoint


def flip_bytes(path: Path, key: str, count: int = 8) -> None:
    """Invert ``count`` bytes in the middle of tensor ``key``'s data, as a bad disk or transfer would."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + size])[key]["data_offsets"]
    middle = 8 + size + (begin + end) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def largest_tensor(path: Path) -> str:
    with safe_open(str(path), framework="pt") as handle:
        return max(handle.keys(), key=lambda key: math.prod(handle.get_slice(key).get_shape()))


@pytest.mark.parametrize("merged", [False, True])
def test_flipped_bytes_in_a_tensor_are_refused(tmp_path: Path, merged: bool) -> None:
    path = save_tiny_checkpoint(tmp_path / "model.safetensors")
    if merged:
        path = merge_checkpoint(path, tmp_path / "merged.safetensors").path
    Segmentor.from_checkpoint(path)  # intact: loads
    key = largest_tensor(path)
    flip_bytes(path, key)
    with pytest.raises(ValueError, match="is corrupt: its tensors no longer match the digest"):
        Segmentor.from_checkpoint(path)
    with pytest.raises(ValueError, match="is corrupt"):
        read_tensors(path)


def test_the_digest_covers_names_dtypes_shapes_and_values() -> None:
    base = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 2, dtype=torch.bfloat16)}
    reference = tensor_digest(base)
    assert tensor_digest({"b": base["b"].clone(), "a": base["a"].clone()}) == reference  # order-free
    changed = [
        {"a2": base["a"], "b": base["b"]},
        {"a": base["a"].reshape(2, 3), "b": base["b"]},
        {"a": base["a"].to(torch.int32).view(torch.float32), "b": base["b"]},
        {"a": base["a"] + torch.tensor([0, 0, 0, 0, 0, 1e-6]), "b": base["b"]},
        {"a": base["a"], "b": base["b"].view(torch.float16)},
    ]
    assert len({reference, *map(tensor_digest, changed)}) == 1 + len(changed)


def test_files_without_a_digest_still_load(tmp_path: Path) -> None:
    path = save_tiny_checkpoint(tmp_path / "model.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = {k: v for k, v in (handle.metadata() or {}).items() if k != DIGEST_KEY}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_safetensors(tensors, path, metadata)
    flip_bytes(path, largest_tensor(path))  # without a digest, nothing can notice
    loaded = read_tensors(path)
    assert loaded.keys() == tensors.keys()
    assert not all(torch.equal(loaded[key], tensors[key]) for key in tensors)
