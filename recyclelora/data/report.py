"""Bad-data records: every raw file that preparation could not use, with what is wrong with it.

Problems: ``unreadable`` (the image or label does not decode, or has the wrong format), ``size-mismatch``
(image and label sizes differ), ``unknown-value`` (a label value the dataset does not define, see
:mod:`recyclelora.data.labelmaps`) and ``missing-partner`` (an image without label or a label without image).
By default such files are skipped and listed in ``<out>/<dataset>_report.json``; in strict mode the first one
raises :class:`BadDataError`.

Frames kept although their label held values outside the dataset's table (GTAV, where such values become 255
as in the published conversion) are not bad data: the report counts them under ``ignored_unknown_values``
(frames, pixels, per raw value, per file), in strict mode too.
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

from recyclelora.errors import InvalidInputError
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


@dataclass(frozen=True)
class IgnoredValues:
    """A kept frame whose label held values outside the dataset's table, written as 255:
    ``pixels`` maps each such raw value to its pixel count."""

    dataset: str
    split: str
    file: str
    pixels: dict[int, int]


class BadDataError(InvalidInputError):
    """Raised in strict mode on the first bad file."""

    def __init__(self, record: BadFile) -> None:
        super().__init__(
            f"{record}. Fix or remove the file, or run without --strict to skip such files and list them "
            "in the report"
        )
        self.record = record


@dataclass
class BadDataLog:
    """Collects the bad files of one preparation run, and its kept frames whose out-of-table label values
    became 255 (``ignored``); ``strict`` turns the first bad file into an error."""

    dataset: str
    strict: bool = False
    records: list[BadFile] = field(default_factory=list)
    ignored: list[IgnoredValues] = field(default_factory=list)

    def add(self, record: BadFile) -> None:
        if self.strict:
            raise BadDataError(record)
        self.records.append(record)

    def add_ignored(self, record: IgnoredValues) -> None:
        """Count a kept frame whose out-of-table label values were written as 255 (never an error)."""
        self.ignored.append(record)

    def ignored_totals(self) -> dict:
        """Frames and pixels with out-of-table values written as 255, in all and per raw value."""
        frames: Counter[int] = Counter()
        pixels: Counter[int] = Counter()
        for record in self.ignored:
            frames.update(record.pixels.keys())
            pixels.update(record.pixels)
        return {
            "frames": len(self.ignored),
            "pixels": sum(pixels.values()),
            "values": {str(v): {"frames": frames[v], "pixels": pixels[v]} for v in sorted(pixels)},
        }

    def write(self, path: str | os.PathLike[str], samples: dict[str, int]) -> Path:
        """Write the report as JSON (also when empty): per-split sample counts, problem counts, skipped files,
        and the kept frames whose out-of-table label values became 255."""
        counts = Counter(r.problem.value for r in self.records)
        report = {
            "dataset": self.dataset,
            "samples": samples,
            "skipped": len(self.records),
            "problems": dict(sorted(counts.items())),
            "files": [{**asdict(r), "problem": r.problem.value} for r in self.records],
            "ignored_unknown_values": {
                **self.ignored_totals(),
                "files": [
                    {"split": r.split, "file": r.file, "pixels": {str(v): n for v, n in r.pixels.items()}}
                    for r in self.ignored
                ],
            },
        }
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        return Path(path)

    def summary(self, max_files: int = 10) -> Table:
        """A rich table of the skipped files (the first ``max_files`` per problem); its caption counts the
        kept frames whose out-of-table label values became 255."""
        table = Table(title=f"{self.dataset}: {len(self.records)} file(s) skipped", title_justify="left")
        if self.ignored:
            totals = self.ignored_totals()
            table.caption = (
                f"{totals['frames']} kept frame(s) had label values outside the {self.dataset} table, "
                f"written as 255 (ignore): values {[int(v) for v in totals['values']]}, "
                f"{totals['pixels']} pixels; see ignored_unknown_values in the report"
            )
            table.caption_justify = "left"
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
