"""Bad-data records: every raw file that preparation could not use, with what is wrong with it.

Problems: ``unreadable`` (the image or label does not decode, or has the wrong format), ``size-mismatch``
(image and label sizes differ), ``unknown-value`` (a label value the dataset does not define, see
:mod:`recyclelora.data.labelmaps`) and ``missing-partner`` (an image without label or a label without image).
By default such files are skipped and listed in ``<out>/<dataset>_report.json``; in strict mode the first one
raises :class:`BadDataError`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from recyclelora.io import atomic_write_text


class Problem(str, Enum):
    UNREADABLE = "unreadable"
    SIZE_MISMATCH = "size-mismatch"
    UNKNOWN_VALUE = "unknown-value"
    MISSING_PARTNER = "missing-partner"


@dataclass(frozen=True)
class BadFile:
    """One raw file that was not used, and why."""

    dataset: str
    split: str
    file: str
    problem: Problem
    detail: str

    def __str__(self) -> str:
        return f"{self.dataset}/{self.split}: {self.file}: {self.problem.value}: {self.detail}"


class BadDataError(ValueError):
    """Raised in strict mode on the first bad file."""

    def __init__(self, record: BadFile) -> None:
        super().__init__(
            f"{record}. Fix or remove the file, or run without --strict to skip such files and list them "
            "in the report"
        )
        self.record = record


@dataclass
class BadDataLog:
    """Collects the bad files of one preparation run; ``strict`` turns the first one into an error."""

    dataset: str
    strict: bool = False
    records: list[BadFile] = field(default_factory=list)

    def add(self, record: BadFile) -> None:
        if self.strict:
            raise BadDataError(record)
        self.records.append(record)

    def write(self, path: str | os.PathLike[str], samples: dict[str, int]) -> Path:
        """Write the report as JSON (also when empty): per-split sample counts, problem counts, files."""
        counts = Counter(r.problem.value for r in self.records)
        report = {
            "dataset": self.dataset,
            "samples": samples,
            "skipped": len(self.records),
            "problems": dict(sorted(counts.items())),
            "files": [{**asdict(r), "problem": r.problem.value} for r in self.records],
        }
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        return Path(path)

    def summary(self, max_files: int = 10) -> Table:
        """A rich table of the skipped files (the first ``max_files`` per problem)."""
        table = Table(title=f"{self.dataset}: {len(self.records)} file(s) skipped", title_justify="left")
        for column in ("split", "problem", "file", "detail"):
            table.add_column(column, overflow="fold")
        shown: Counter[Problem] = Counter()
        for record in self.records:
            shown[record.problem] += 1
            if shown[record.problem] <= max_files:
                table.add_row(*map(escape, (record.split, record.problem.value, record.file, record.detail)))
        for problem, count in shown.items():
            if count > max_files:
                table.add_row("", problem.value, f"... and {count - max_files} more", "see the report file")
        return table
