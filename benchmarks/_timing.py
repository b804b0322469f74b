"""Side-by-side timing helpers for the benchmarks: interleaved repeats, medians, one table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

from rich.console import Console
from rich.table import Table


def time_interleaved(candidates: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each candidate, run round-robin so machine load hits all alike."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_ratios(title: str, seconds: Mapping[str, float], reference: str, targets: Mapping[str, float]) -> None:
    """A table of medians and ratios to ``reference``, with the target ratio where one is set."""
    table = Table(title=title)
    for column in ("candidate", "seconds", f"ratio to {reference}", "target", "met"):
        table.add_column(column)
    for name, value in seconds.items():
        ratio = value / seconds[reference]
        target = targets.get(name)
        met = "" if target is None else ("yes" if ratio <= target else "NO")
        table.add_row(name, f"{value:.4f}", f"{ratio:.3f}", "" if target is None else f"<= {target}", met)
    Console().print(table)
