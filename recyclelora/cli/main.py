"""Entry point of ``recyclelora-cli``: registers the command groups of the sibling modules."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="recyclelora-cli",
    help="RecycleLoRA: RRQR dual adapters for domain-generalised semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

from recyclelora.cli.data import data_app  # noqa: E402

app.add_typer(data_app, name="data")

from recyclelora.cli.synth import synth as _synth  # noqa: E402

data_app.command("synth")(_synth)

from recyclelora.cli.adapters import info as _info  # noqa: E402
from recyclelora.cli.adapters import init as _init  # noqa: E402
from recyclelora.cli.train import train_command as _train  # noqa: E402

app.command("init")(_init)
app.command("info")(_info)
app.command("train")(_train)
