"""``recyclelora-cli data synth``: generate the embedded multi-domain benchmark (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recyclelora.cli.common import console, user_errors
from recyclelora.data.synth_config import SOURCE_DOMAIN, TARGET_DOMAINS, SynthConfig

if TYPE_CHECKING:
    import numpy as np

_DEFAULT = SynthConfig()
STATS_IMAGES = 20


def _parse_size(size: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError as error:
        raise typer.BadParameter(
            f"{size!r} is not WIDTHxHEIGHT, e.g. 512x256", param_hint="--size"
        ) from error
    return width, height


def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder of the benchmark.")],
    seed: Annotated[
        int, typer.Option(help="Seed of every scene; the same seed gives byte-identical files.", min=0)
    ] = 0,
    size: Annotated[
        str, typer.Option(help="Image size WIDTHxHEIGHT.")
    ] = f"{_DEFAULT.width}x{_DEFAULT.height}",
    train: Annotated[int, typer.Option(help="Source-domain train images.", min=1)] = _DEFAULT.source_train,
    val: Annotated[int, typer.Option(help="Source-domain val images.", min=1)] = _DEFAULT.source_val,
    target_val: Annotated[
        int, typer.Option(help="Val images per target domain.", min=1)
    ] = _DEFAULT.target_val,
    target: Annotated[
        list[str] | None,
        typer.Option(help=f"Target domain (repeat); default: all of {list(TARGET_DOMAINS)}."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).", min=1)] = None,
) -> None:
    """Draw street scenes in a source domain and several target domains, with trainId labels and manifests."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from recyclelora.data.manifest import read_manifest
    from recyclelora.data.synth import colour_stats, generate_benchmark

    width, height = _parse_size(size)
    with user_errors():
        config = SynthConfig(width, height, train, val, target_val, tuple(target or TARGET_DOMAINS))
        with Progress(
            TextColumn("synth"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("synth", total=None)
            summary = generate_benchmark(
                out,
                seed=seed,
                config=config,
                workers=workers,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    table = Table(
        title=f"benchmark {summary.root} ({'reused' if summary.reused else f'{summary.seconds:.1f} s'})"
    )
    for column in ("domain", "split", "images", "mean RGB", "std RGB", "colour shift"):
        table.add_column(column)
    reference = None
    for domain, splits in summary.manifests.items():
        for split, path in splits.items():
            samples = read_manifest(path)
            stats = colour_stats(samples[:STATS_IMAGES])
            reference = reference or stats
            shift = f"{stats.shift(reference):.1f}"
            table.add_row(domain, split, str(len(samples)), _rgb(stats.mean), _rgb(stats.std), shift)
    console.print(table)
    console.print(
        f"statistics over the first {STATS_IMAGES} images of each split; colour shift: mean "
        f"distance of per-class mean colours to {SOURCE_DOMAIN}/train"
    )


def _rgb(values: np.ndarray) -> str:
    return " ".join(f"{value:.0f}" for value in values)
