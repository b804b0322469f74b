"""``recyclelora-cli train``: train a segmentor as ``params.yaml`` says (one process, or DDP under torchrun)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from recyclelora.cli.adapters import default_init_cache
from recyclelora.cli.common import console, user_errors
from recyclelora.signals import Interrupted


def train_command(
    params: Annotated[Path, typer.Option(help="params.yaml with data, model and train sections.")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, model.safetensors, train_log.csv.")] = Path(
        "models/train"
    ),
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's latest checkpoint.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Init cache [default: ~/.cache/recyclelora/init].")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train. Multi-GPU: ``torchrun --nproc_per_node=N -m recyclelora train --params params.yaml``."""
    from recyclelora.config import load_params
    from recyclelora.train.loop import train

    with user_errors():
        run = load_params(params, sections=("data", "model", "train"))
        try:
            result = train(
                run.model,
                run.train,
                run.data,
                out,
                resume=resume,
                cache_dir=cache_dir or default_init_cache(),
                progress=progress,
            )
        except Interrupted as stop:
            if os.environ.get("RANK", "0") != "0":  # under torchrun every process stops; rank 0 says where
                raise typer.Exit(stop.exit_code) from stop
            raise
    console.print(
        f"{len(result.history) and result.history[-1]['step']} steps, {result.iterations_per_second:.2f} it/s, "
        f"peak memory {result.peak_memory_mb:.0f} MiB -> {result.model_path}"
    )
