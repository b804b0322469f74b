"""Entry point of ``recyclelora-cli``: registers the command groups of the sibling modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="recyclelora-cli",
    help="RecycleLoRA: RRQR dual adapters for domain-generalised semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
