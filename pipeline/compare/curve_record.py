"""The training curve's record, ``<table>.json`` beside its Markdown (``docs/training-curve.json``): one
summary per budget, committed with the table, so that a curve grows across clones and sessions.

A budget's row is what the table and chart show: the seeds, each method's mean-over-targets mIoU (mean and
sample standard deviation over seeds), each method's difference to RecycleLoRA with its 95 % paired bootstrap
interval, the mean training time of a run, and where the row was measured (the commit its experiments were
based on). DVC experiments are Git refs that a clone does not have unless they were pushed, and the paired
bootstrap needs every seed's per-image counts at once; so a curve run replaces the rows of the budgets it ran
and keeps the others from the record."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.compare.stats import CurvePoint
from recyclelora.errors import InvalidInputError
from recyclelora.eval.bootstrap import BootstrapInterval
from recyclelora.io import atomic_write_text

#: The record's format; a record of another version is refused.
VERSION = 1


@dataclasses.dataclass(frozen=True)
class Score:
    """A method's mean-over-targets mIoU (a fraction) over seeds: the mean and, from two seeds, the sample
    standard deviation."""

    mean: float
    std: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Score:
        """The mean and sample standard deviation (n - 1) of ``values``."""
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclasses.dataclass(frozen=True)
class CurveRow:
    """One budget of the curve as the table and chart show it."""

    seeds: int
    scores: dict[str, Score]
    differences: dict[str, BootstrapInterval]
    seconds: float | None
    source: str


def summarise(point: CurvePoint, source: str) -> CurveRow:
    """The row of a budget's finished experiments: ``scores[method] = Score(mean, std)`` of their
    mean-over-targets mIoU, the mean-over-targets differences, the mean training seconds of all its runs."""
    means = {method: per["mean"] for method, per in point.scores.items() if per.get("mean")}
    seconds = [value for per in point.scores.values() for value in per.get("seconds", [])]
    return CurveRow(
        seeds=max((len(values) for values in means.values()), default=0),
        scores={method: Score.of(values) for method, values in means.items()},
        differences={method: per["mean"] for method, per in point.differences.items()},
        seconds=statistics.fmean(seconds) if seconds else None,
        source=source,
    )


def record_path(table: Path) -> Path:
    """The record beside the Markdown ``table``."""
    return table.with_suffix(".json")


def write_record(rows: Mapping[int, CurveRow], path: Path) -> Path:
    """Write ``rows`` (by increasing steps) to ``path`` atomically; return it."""
    budgets = {str(steps): dataclasses.asdict(rows[steps]) for steps in sorted(rows)}
    atomic_write_text(path, json.dumps({"version": VERSION, "budgets": budgets}, indent=2) + "\n")
    return path


def read_record(path: Path) -> dict[int, CurveRow]:
    """The rows of the record at ``path`` by increasing steps; none when it does not exist."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, not {VERSION}")
        return {
            int(steps): CurveRow(
                seeds=int(row["seeds"]),
                scores={method: Score(**score) for method, score in row["scores"].items()},
                differences={
                    method: BootstrapInterval(**interval) for method, interval in row["differences"].items()
                },
                seconds=row["seconds"],
                source=str(row["source"]),
            )
            for steps, row in sorted(data["budgets"].items(), key=lambda item: int(item[0]))
        }
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InvalidInputError(
            f"{path}: not a training-curve record ({type(error).__name__}: {error}); restore it from Git "
            "(git checkout -- FILE), or delete it to start the curve afresh"
        ) from None


def grown(record: Path, measured: Mapping[int, CurveRow]) -> dict[int, CurveRow]:
    """The curve after a run: the record's rows with those of the ``measured`` budgets replaced or added, by
    increasing steps."""
    return dict(sorted((read_record(record) | dict(measured)).items()))
