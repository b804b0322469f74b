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

from recyclelora.cli.evaluate import eval_command as _eval  # noqa: E402
from recyclelora.cli.evaluate import predict_command as _predict  # noqa: E402
from recyclelora.cli.model import analyze as _analyze  # noqa: E402
from recyclelora.cli.model import export_app as _export_app  # noqa: E402
from recyclelora.cli.model import merge as _merge  # noqa: E402

app.command("eval")(_eval)
app.command("predict")(_predict)
app.command("merge")(_merge)
app.add_typer(_export_app, name="export")
app.command("analyze")(_analyze)

from pipeline.cli import stage_app as _stage_app  # noqa: E402

app.add_typer(_stage_app, name="stage")
