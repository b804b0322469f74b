"""Initial factors of every adapted matrix of a model, computed in parallel across matrices."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import torch
from threadpoolctl import threadpool_limits

from recyclelora.adapters.config import AdapterConfig
from recyclelora.adapters.factors import Factors, lora_factors, rrqr_factors, svd_factors


def layer_factors(
    weight: torch.Tensor, config: AdapterConfig, generator: torch.Generator | None = None
) -> Factors:
    """The initial factors of one weight under ``config.init`` and its effective ranks."""
    rank_main, rank_sub = config.effective_ranks
    if config.init in ("rrqr", "rrqr-main", "rrqr-sub"):
        return rrqr_factors(weight, rank_main, rank_sub)
    if config.init in ("pissa", "milora"):
        return svd_factors(weight, rank_main, config.scaling, minor=config.init == "milora")
    return lora_factors(weight, rank_main, generator=generator)


def compute_factors(
    weights: Mapping[str, torch.Tensor],
    config: AdapterConfig,
    *,
    workers: int | None = None,
    generator: torch.Generator | None = None,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, Factors]:
    """Factors of every weight, keyed like ``weights``.

    Deterministic initialisers run on ``workers`` threads (default: all cores; LAPACK releases the GIL),
    each with single-threaded BLAS so the threads do not oversubscribe the cores. LoRA's random init runs
    sequentially so that it depends on ``generator`` alone.
    """
    if config.init == "lora":
        result = {}
        for name, weight in weights.items():
            result[name] = layer_factors(weight, config, generator)
            if on_done is not None:
                on_done(name)
        return result
    workers = max(1, workers or os.cpu_count() or 1)
    with threadpool_limits(1 if workers > 1 else None), _torch_threads(1 if workers > 1 else None):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {name: pool.submit(layer_factors, weight, config) for name, weight in weights.items()}
            result = {}
            for name, future in futures.items():
                result[name] = future.result()
                if on_done is not None:
                    on_done(name)
    return result


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set ``torch.set_num_threads`` (None: leave unchanged)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
