"""Initial factors of every adapted matrix of a model, computed in parallel across matrices."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from recyclelora.adapters.config import AdapterConfig
from recyclelora.adapters.factors import (
    Factors,
    check_ranks,
    factors_from_columns,
    lora_factors,
    rrqr_columns,
    rrqr_factors,
    svd_factors,
)

#: With ``workers=None``, models with fewer adapted weight elements than this decompose in-process
#: (starting worker processes costs about a second; a ViT-S has 21M elements, a DINOv2-L 302M).
AUTO_PARALLEL_MIN_ELEMENTS = 1 << 22
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux the kernel kills this worker when its parent dies, even by ``kill -9``
    (a pool's workers would otherwise run on as orphans); elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def layer_factors(
    weight: torch.Tensor, config: AdapterConfig, generator: torch.Generator | None = None
) -> Factors:
    """The initial factors of one weight under ``config.init`` (its :data:`~recyclelora.adapters.initialisers.FactorRule`) and effective ranks."""
    rule = config.initialiser.rule
    main, sub = config.effective_ranks
    if rule == "rrqr":
        return rrqr_factors(weight, main, sub)
    if rule == "random":
        return lora_factors(weight, main, generator=generator)
    return svd_factors(weight, main, config.scaling, minor=rule == "svd_minor")


def compute_factors(
    weights: Mapping[str, torch.Tensor],
    config: AdapterConfig,
    *,
    workers: int | None = None,
    generator: torch.Generator | None = None,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, Factors]:
    """Factors of every weight, keyed like ``weights``.

    RRQR runs on ``workers`` processes (None: all cores, or in-process for small models), one matrix each, BLAS single-threaded (see
    :func:`rrqr_columns`; processes because one-thread OpenBLAS calls from several threads at once have
    been seen to return wrong pivots). SVD initialisers use torch's own threads; LoRA's
    random init runs in order so that it depends on ``generator`` alone.
    """
    if workers is None:
        small = sum(w.numel() for w in weights.values()) < AUTO_PARALLEL_MIN_ELEMENTS
        workers = 1 if small else os.cpu_count() or 1
    if not config.initialiser.parallel or workers <= 1 or len(weights) == 1:
        result = {}
        for name, weight in weights.items():
            result[name] = layer_factors(weight, config, generator)
            if on_done is not None:
                on_done(name)
        return result
    rank_main, rank_sub = config.effective_ranks
    for weight in weights.values():
        check_ranks(tuple(weight.shape), rank_main, rank_sub)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(
        max_workers=min(workers, len(weights)),
        mp_context=context,
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures: dict[str, Future] = {
            name: pool.submit(rrqr_columns, w.detach().to("cpu", torch.float32).numpy(), rank_main, rank_sub)
            for name, w in weights.items()
        }
        result = {}
        for name, future in futures.items():
            pivots, q_columns = future.result()
            result[name] = factors_from_columns(pivots, q_columns, weights[name].shape[1], rank_main, rank_sub)
            if on_done is not None:
                on_done(name)
    return result
