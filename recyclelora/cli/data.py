"""``recyclelora-cli data``: download and prepare the real datasets into trainId labels and manifests."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recyclelora.data.download import GTA5_URL, DownloadError, download_dataset
from recyclelora.data.prepare import PrepareResult, prepare_dataset
from recyclelora.data.raw import RAW_DATASETS

data_app = typer.Typer(help="Download and prepare datasets.", no_args_is_help=True)

DatasetName = Enum("DatasetName", {name: name for name in RAW_DATASETS}, type=str)  # type: ignore[misc]

_console = Console()
_errors = Console(stderr=True)

DatasetArg = Annotated[DatasetName, typer.Argument(help="Dataset name.", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder for labels, manifests and the report.")]
WorkersOpt = Annotated[int | None, typer.Option(help="Worker processes (default: all cores).", min=1)]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Stop at the first bad file instead of skipping it.")
]


@data_app.command("prepare")
def prepare(
    dataset: DatasetArg,
    raw: Annotated[Path, typer.Option("--raw", help="Folder of the unpacked dataset, as distributed.")],
    out: OutOpt,
    split: Annotated[str | None, typer.Option(help="Only this split (train or val); default: all.")] = None,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
    halve_mapillary_val: Annotated[
        bool, typer.Option(help="Halve Mapillary validation images and labels, as the field evaluates them.")
    ] = True,
) -> None:
    """Convert a raw dataset's labels to trainIds, write manifests and a report of skipped files."""
    _report(
        lambda: prepare_dataset(
            dataset.value,
            raw,
            out,
            split=split,
            workers=workers,
            strict=strict,
            halve_mapillary_val=halve_mapillary_val,
        )
    )


@data_app.command("download")
def download(
    dataset: DatasetArg,
    out: OutOpt,
    base_url: Annotated[
        str, typer.Option(envvar="RECYCLELORA_GTA5_URL", help="Where the GTAV zips are served.")
    ] = GTA5_URL,
    checksums: Annotated[
        Path | None, typer.Option(help="sha256sum-style file with the zips' checksums.", exists=True)
    ] = None,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Download GTAV (public) or Cityscapes (CITYSCAPES_USERNAME/PASSWORD), unpack and prepare it."""
    _report(
        lambda: download_dataset(
            dataset.value, out, base_url=base_url, checksums=checksums, workers=workers, strict=strict
        )
    )


def _report(run: Callable[[], PrepareResult]) -> None:
    """Run a prepare step, print its summary, and turn expected failures into exit code 1."""
    try:
        result = run()
    except (FileNotFoundError, ValueError, DownloadError) as error:
        _errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from error
    table = Table(title="prepared", title_justify="left")
    for column in ("split", "samples", "converted", "reused", "skipped", "manifest"):
        table.add_column(column)
    for s in result.splits:
        counts = (s.converted + s.reused, s.converted, s.reused, s.skipped)
        table.add_row(s.split, *map(str, counts), str(s.manifest))
    _console.print(table)
    if result.bad.records or result.bad.ignored:
        _console.print(result.bad.summary())
    _console.print(f"report: {result.report}")
