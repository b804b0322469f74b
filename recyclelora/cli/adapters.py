"""``recyclelora-cli init`` (compute and cache a model's decomposition) and ``info`` (what a file holds)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from recyclelora.adapters.config import INIT_METHODS
from recyclelora.cli.common import console, user_errors
from recyclelora.errors import InvalidInputError
from recyclelora.io import default_cache_dir


def default_init_cache() -> Path:
    """``<recyclelora cache>/init``: where ``init`` and training keep decompositions unless told otherwise."""
    return default_cache_dir() / "init"


def init(
    source: Annotated[
        str,
        typer.Argument(
            help="'embedded' (DINOv2-S/14 from the package index), a timm model name (its hub weights) "
            "or a checkpoint file (.pth/.pt/.safetensors; give its architecture with --model)."
        ),
    ],
    model: Annotated[str | None, typer.Option(help="timm architecture of a checkpoint file.")] = None,
    rank_main: Annotated[int, typer.Option(help="Rank of the main adapter.")] = 32,
    rank_sub: Annotated[int, typer.Option(help="Rank of the sub adapter.")] = 4,
    init_method: Annotated[str, typer.Option("--init", help=f"Initialiser: {', '.join(INIT_METHODS)}.")] = "rrqr",
    alpha: Annotated[float, typer.Option(help="Scaling numerator: s = alpha / (r_main + r_sub).")] = 1.0,
    img_size: Annotated[int, typer.Option(help="Position-grid size the backbone is built at.")] = 224,
    patch_size: Annotated[int | None, typer.Option(help="Convert the patch size (e.g. 16).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Init cache folder [default: ~/.cache/recyclelora/init].")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes for the decomposition (default: all cores).")] = None,
) -> None:
    """Compute the initial adapter factors of every adapted matrix once and cache them (safetensors)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from recyclelora.adapters import AdapterConfig, CacheEntry, find_target_linears, inject_adapters
    from recyclelora.models.backbone import BackboneConfig, ViTBackbone
    from recyclelora.models.sources import CHECKPOINT_SUFFIXES

    with user_errors():
        if Path(source).suffix in CHECKPOINT_SUFFIXES:
            if model is None:
                raise InvalidInputError(f"say which timm architecture {source} holds with --model, e.g. vit_large_patch14_dinov2")
            backbone_config = BackboneConfig(name=model, weights=source, img_size=img_size, patch_size=patch_size)
        elif source == "embedded":
            backbone_config = BackboneConfig(weights="embedded", img_size=img_size, patch_size=patch_size)
        else:
            backbone_config = BackboneConfig(name=source, weights="hub", img_size=img_size, patch_size=patch_size)
        config = AdapterConfig(rank_main=rank_main, rank_sub=rank_sub, init=init_method, alpha=alpha)
        if not config.initialiser.deterministic:
            raise InvalidInputError(f"init={config.init!r} is random (seeded at training time): there is nothing to cache")
        vit = ViTBackbone(backbone_config).vit
        cache = cache_dir or default_init_cache()
        targets = find_target_linears(vit, config)
        entry = CacheEntry.locate(cache, config, {name: linear.weight for name, linear in targets.items()})
        existed = entry.path.is_file()
        start = time.perf_counter()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:  # fmt: skip
            task = progress.add_task(f"{config.init} init", total=len(targets))
            inject_adapters(vit, config, cache_dir=cache, workers=workers, on_done=lambda _: progress.advance(task))
        seconds = time.perf_counter() - start
        console.print(
            f"{len(targets)} matrices, {'reused' if existed else 'computed'} in {seconds:.2f} s -> {entry.path}"
        )


def info(path: Annotated[Path, typer.Argument(help="An init cache file or a segmentor checkpoint.")]) -> None:
    """Print a table of what a cache file or a checkpoint holds."""
    from rich.table import Table
    from safetensors import safe_open

    from recyclelora.models.checkpoint import FORMAT as CHECKPOINT_FORMAT
    from recyclelora.models.config import ModelConfig

    with user_errors():
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as error:  # safetensors raises several types for a file that is not one
            raise InvalidInputError(f"{path} is not a safetensors file ({error})") from None
        table = Table(title=str(path), show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        if "spec" in metadata:
            spec = json.loads(metadata["spec"])
            table.add_row("kind", "RRQR/SVD init cache")
            for key in ("init", "rank_main", "rank_sub", "algorithm_version", "alpha"):
                if key in spec:
                    table.add_row(key, str(spec[key]))
            table.add_row("layers", str(len(spec["layers"])))
        elif metadata.get("format") == CHECKPOINT_FORMAT:
            config = json.loads(metadata["model_config"])
            table.add_row("kind", "merged segmentor" if json.loads(metadata["merged"]) else "segmentor checkpoint")
            table.add_row("backbone", f"{config['backbone']['name']} (weights {config['backbone']['weights']})")
            table.add_row("tuning", config["tuning"])
            if config["tuning"] == "adapters":
                adapter = config["adapter"]
                table.add_row("adapter", f"{adapter['init']}, rank main {adapter['rank_main']} / sub {adapter['rank_sub']}")
            table.add_row("head", config["head"]["kind"])
            table.add_row("pyramid", ModelConfig.from_dict(config).backbone.pyramid)
            if "trainable_parameters" in metadata:
                counts = json.loads(metadata["trainable_parameters"])
                parts = ", ".join(f"{part} {counts[part]:,}" for part in ("adapters", "backbone", "neck", "head"))
                table.add_row("trainable parameters", f"{counts['total']:,} ({parts})")
            for key in ("step", "source_sha256"):
                if key in metadata:
                    table.add_row(key, metadata[key])
        else:
            table.add_row("kind", "safetensors file")
        table.add_row("tensors", str(len(shapes)))
        table.add_row("values", f"{sum(_numel(s) for s in shapes.values()):,}")
        table.add_row("size", f"{path.stat().st_size / 2**20:.1f} MiB")
        console.print(table)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
