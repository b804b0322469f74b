from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from recyclelora import AdapterConfig, inject_adapters
from recyclelora.adapters import init as init_module
from recyclelora.adapters.cache import CacheEntry, read_cache_metadata
from recyclelora.adapters.inject import find_target_linears
from tests.helpers import tiny_vit

CONFIG = AdapterConfig(rank_main=6, rank_sub=2)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: linear.weight for name, linear in find_target_linears(model, CONFIG).items()}


def _files(root: Path) -> list[Path]:
    return sorted(root.iterdir())


def _forbid_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the decomposition was recomputed although the cache holds it")

    monkeypatch.setattr("recyclelora.adapters.inject.compute_factors", fail)


def test_cache_hit_returns_bit_identical_factors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = inject_adapters(tiny_vit(), CONFIG, cache_dir=tmp_path)
    (cache_file,) = _files(tmp_path)
    assert cache_file.suffix == ".safetensors"
    _forbid_compute(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = inject_adapters(tiny_vit(), CONFIG, cache_dir=tmp_path)
    assert first.keys() == second.keys()
    for name in first:
        for field in ("a_main", "b_main", "a_sub", "b_sub"):
            assert torch.equal(getattr(first[name], field), getattr(second[name], field))


def _flip_byte_in_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # inside the last tensor's data, past the header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupted_cache_is_recomputed_with_a_warning(tmp_path: Path, damage: str) -> None:
    reference = inject_adapters(tiny_vit(), CONFIG, cache_dir=tmp_path)
    (cache_file,) = _files(tmp_path)
    if damage == "flip":
        _flip_byte_in_data(cache_file)
    elif damage == "truncate":
        cache_file.write_bytes(cache_file.read_bytes()[:200])
    else:
        cache_file.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="recomputing"):
        recomputed = inject_adapters(tiny_vit(), CONFIG, cache_dir=tmp_path)
    for name in reference:
        assert torch.equal(reference[name].b_main, recomputed[name].b_main)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inject_adapters(tiny_vit(), CONFIG, cache_dir=tmp_path)  # repaired: a clean hit now
    assert [p.name for p in _files(tmp_path)] == [cache_file.name]


def test_stale_cache_spec_is_not_used(tmp_path: Path) -> None:
    model = tiny_vit()
    inject_adapters(model, CONFIG, cache_dir=tmp_path)
    (cache_file,) = _files(tmp_path)
    entry = CacheEntry.locate(tmp_path, CONFIG, _weights(tiny_vit()))
    assert entry.path == cache_file
    stale = CacheEntry(path=entry.path, spec={**entry.spec, "algorithm_version": -1})
    with pytest.warns(RuntimeWarning, match="stale"):
        assert stale.load() is None


def test_key_depends_on_weights_ranks_and_init(tmp_path: Path) -> None:
    weights = _weights(tiny_vit())
    base = CacheEntry.locate(tmp_path, CONFIG, weights).path
    assert CacheEntry.locate(tmp_path, AdapterConfig(rank_main=5, rank_sub=2), weights).path != base
    assert CacheEntry.locate(tmp_path, AdapterConfig(init="pissa", rank_main=6, rank_sub=2), weights).path != base
    changed = dict(weights)
    first = next(iter(changed))
    changed[first] = changed[first].detach().clone()
    changed[first][0, 0] += 1.0
    assert CacheEntry.locate(tmp_path, CONFIG, changed).path != base


def test_lora_is_random_and_never_cached(tmp_path: Path) -> None:
    inject_adapters(tiny_vit(), AdapterConfig(init="lora", rank_main=6, rank_sub=2), cache_dir=tmp_path)
    assert _files(tmp_path) == []


def test_no_temporary_files_left_and_metadata_readable(tmp_path: Path) -> None:
    inject_adapters(tiny_vit(), CONFIG, cache_dir=tmp_path)
    (cache_file,) = _files(tmp_path)
    spec, shapes = read_cache_metadata(cache_file)
    assert spec["init"] == "rrqr" and spec["rank_main"] == 6 and spec["rank_sub"] == 2
    assert shapes["blocks.0.attn.qkv.a_main"] == (6, 48)
    assert json.loads(json.dumps(spec)) == spec  # plain JSON: no tuples, tensors or other types
    assert set(spec["layers"]) == set(find_target_linears(tiny_vit(), CONFIG))  # one weight hash per layer


def test_parallel_and_sequential_decompositions_agree() -> None:
    weights = _weights(tiny_vit())
    parallel = init_module.compute_factors(weights, CONFIG, workers=2)
    sequential = init_module.compute_factors(weights, CONFIG, workers=1)
    for name in weights:
        assert torch.equal(parallel[name].b_main, sequential[name].b_main)
        assert torch.equal(parallel[name].a_sub, sequential[name].a_sub)
