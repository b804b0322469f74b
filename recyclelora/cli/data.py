"""``recyclelora-cli data``: download and prepare the real datasets into trainId labels and manifests; check
manifests before a run."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recyclelora.cli.common import console, user_errors
from recyclelora.cli.evaluate import DEFAULT_MAX_PIXELS, MaxPixelsOpt
from recyclelora.data.raw import GTA5_URL, RAW_DATASETS
from recyclelora.errors import InvalidInputError

if TYPE_CHECKING:
    from recyclelora.data.prepare import PrepareResult

data_app = typer.Typer(help="Download and prepare datasets.", no_args_is_help=True)

DatasetName = Enum("DatasetName", {name: name for name in RAW_DATASETS}, type=str)  # type: ignore[misc]


DatasetArg = Annotated[DatasetName, typer.Argument(help="Dataset name.", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder for labels, manifests and the report.")]
WorkersOpt = Annotated[int | None, typer.Option(help="Worker processes (default: all cores).", min=1)]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Stop at the first bad file instead of skipping it.")
]


@data_app.command("prepare")
def prepare(
    dataset: Annotated[
        str,
        typer.Argument(
            help=f"Dataset name: {', '.join(RAW_DATASETS)}, or your own dataset's with --custom.",
            show_default=False,
        ),
    ],
    out: OutOpt,
    raw: Annotated[
        Path | None,
        typer.Option("--raw", help="Folder of the unpacked dataset, as distributed (with --custom: its root)."),
    ] = None,
    custom: Annotated[
        Path | None,
        typer.Option(
            "--custom",
            help="YAML file describing your own dataset: root, classes, label_map, splits, images, labels "
            "(docs/custom-data.md).",
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Only this split (train or val); default: all.")] = None,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
    halve_mapillary_val: Annotated[
        bool, typer.Option(help="Halve Mapillary validation images and labels, as the field evaluates them.")
    ] = True,
) -> None:
    """Convert a dataset's labels to class ids, write manifests and a report of skipped files."""

    def run() -> PrepareResult:
        from recyclelora.config import build_config, read_yaml
        from recyclelora.data.custom_config import CustomDatasetConfig
        from recyclelora.data.prepare import prepare_dataset

        spec = None if custom is None else build_config(CustomDatasetConfig, read_yaml(custom), str(custom))
        folder = raw if raw is not None else (None if spec is None else Path(spec.root))
        if folder is None:
            raise InvalidInputError(
                f"give --raw (the folder of the unpacked {dataset} download) or --custom (a YAML file describing "
                "your own dataset, docs/custom-data.md)"
            )
        return prepare_dataset(
            dataset,
            folder,
            out,
            split=split,
            workers=workers,
            strict=strict,
            halve_mapillary_val=halve_mapillary_val,
            custom=spec,
        )

    _report(run)


@data_app.command("download")
def download(
    dataset: DatasetArg,
    out: OutOpt,
    base_url: Annotated[
        str, typer.Option(envvar="RECYCLELORA_GTA5_URL", help="Where the GTAV zips are served.")
    ] = GTA5_URL,
    checksums: Annotated[
        Path | None,
        typer.Option(
            help="sha256sum-style file of the zips' SHA-256, extended with those of zips that have none published "
            "[default: OUT/archives/gta5/SHA256SUMS].",
            show_default=False,
        ),
    ] = None,
    workers: WorkersOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Download GTAV (public) or Cityscapes (CITYSCAPES_USERNAME/PASSWORD), unpack and prepare it."""
    from recyclelora.data.download import download_dataset

    _report(
        lambda: download_dataset(
            dataset.value, out, base_url=base_url, checksums=checksums, workers=workers, strict=strict
        )
    )


@data_app.command("check")
def check(
    manifests: Annotated[
        list[Path],
        typer.Argument(help="Manifests (.parquet) to check.", metavar="MANIFEST", show_default=False),
    ],
    workers: Annotated[int | None, typer.Option(help="Worker threads (default: all cores).", min=1)] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where passes are recorded (default: $RECYCLELORA_CACHE/data-check, "
            "else ~/.cache/recyclelora/data-check).",
            show_default=False,
        ),
    ] = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
) -> None:
    """Decode every image and label of the manifests as training reads them, check sizes and label ids; list
    the bad samples.

    Each manifest that passes is recorded in the cache, so the pipeline's stages skip its check.
    """
    from recyclelora.data.check import check_manifest, default_check_cache, raise_if_bad, record_pass

    with user_errors():
        reports = [check_manifest(path, workers=workers, max_pixels=max_pixels) for path in manifests]
        for report in reports:
            if report.ok:
                record_pass(report, cache_dir or default_check_cache())
                console.print(report.summary())
        raise_if_bad(reports)


def _report(run: Callable[[], PrepareResult]) -> None:
    """Run a prepare step, print its summary, and turn user errors into one line and exit code 1."""
    from rich.table import Table

    with user_errors():
        result = run()
    table = Table(title="prepared", title_justify="left")
    for column in ("split", "samples", "converted", "reused", "skipped", "manifest"):
        table.add_column(column)
    for s in result.splits:
        counts = (s.converted + s.reused, s.converted, s.reused, s.skipped)
        table.add_row(s.split, *map(str, counts), str(s.manifest))
    console.print(table)
    if result.bad.records or result.bad.ignored:
        console.print(result.bad.summary())
    console.print(f"report: {result.report}")
