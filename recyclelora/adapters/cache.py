"""On-disk cache of a model's initial factors (safetensors, no pickle), verified on every reuse.

A cache file is named by a key hashing the algorithm version, the initialiser, its ranks (and alpha for the
SVD initialisers, whose factors carry the scaling) and the SHA-256 of every adapted weight. Its metadata
repeats all of that plus the SHA-256 of every stored tensor, so a stale or corrupted file is detected,
reported with a warning and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from recyclelora.adapters.config import AdapterConfig
from recyclelora.adapters.factors import ALGORITHM_VERSION, Factors
from recyclelora.digest import tensor_sha256
from recyclelora.errors import InvalidInputError
from recyclelora.io import save_safetensors

FORMAT = "recyclelora-init"
_FIELDS = ("a_main", "b_main", "a_sub", "b_sub")


def _spec(config: AdapterConfig, weight_hashes: dict[str, str]) -> dict:
    rank_main, rank_sub = config.effective_ranks
    spec = {
        "format": FORMAT,
        "algorithm_version": ALGORITHM_VERSION,
        "init": config.init,
        "rank_main": rank_main,
        "rank_sub": rank_sub,
        "layers": dict(sorted(weight_hashes.items())),
    }
    if config.initialiser.uses_scaling:
        spec["alpha"] = config.alpha
    return spec


@dataclass(frozen=True)
class CacheEntry:
    """Where a model's factors live in the cache and what they must match."""

    path: Path
    spec: dict

    @classmethod
    def locate(cls, root: str | Path, config: AdapterConfig, weights: dict[str, torch.Tensor]) -> CacheEntry:
        spec = _spec(config, {name: tensor_sha256(w) for name, w in weights.items()})
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        name = f"{config.init}_m{spec['rank_main']}_s{spec['rank_sub']}_{key[:20]}.safetensors"
        return cls(path=Path(root) / name, spec=spec)

    def load(self) -> dict[str, Factors] | None:
        """The cached factors, or None (with a warning when a file exists but is stale or corrupted)."""
        if not self.path.is_file():
            return None
        try:
            problem = self._verify()
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            problem = f"unreadable ({error})"
        if isinstance(problem, str):
            warnings.warn(f"init cache {self.path} is {problem}: recomputing it", RuntimeWarning, stacklevel=2)
            return None
        return problem

    def _verify(self) -> dict[str, Factors] | str:
        with safe_open(str(self.path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        stored_spec = json.loads(metadata.get("spec", "null"))
        if stored_spec != self.spec:
            return "stale (made for other weights, ranks or algorithm version)"
        hashes = json.loads(metadata["tensor_sha256"])
        if set(hashes) != set(tensors):
            return "corrupted (tensor list differs from its record)"
        for key, tensor in tensors.items():
            if tensor_sha256(tensor) != hashes[key]:
                return f"corrupted (checksum of {key} differs)"
        return {
            layer: Factors(*(tensors[f"{layer}.{field}"] for field in _FIELDS)) for layer in self.spec["layers"]
        }

    def save(self, factors: dict[str, Factors]) -> None:
        """Write the factors atomically with the spec and per-tensor checksums as metadata."""
        tensors = {
            f"{layer}.{field}": getattr(f, field).detach().to("cpu", torch.float32).contiguous()
            for layer, f in factors.items()
            for field in _FIELDS
        }
        metadata = {
            "spec": json.dumps(self.spec, sort_keys=True),
            "tensor_sha256": json.dumps({k: tensor_sha256(v) for k, v in tensors.items()}),
        }
        save_safetensors(tensors, self.path, metadata)


def read_cache_metadata(path: str | Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The spec stored in a cache file and the shape of each tensor, without loading the data."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    if "spec" not in metadata:
        raise InvalidInputError(f"{path} is not a recyclelora init cache (no 'spec' in its metadata)")
    return json.loads(metadata["spec"]), shapes
