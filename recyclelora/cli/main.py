"""Entry point of ``recyclelora-cli``: registers the commands of the sibling modules.

Every command module imports its heavy dependencies (torch, timm, ...) inside the command, so ``--help`` is fast.
The DVC pipeline's stages are not library commands: they run from the workspace as ``python -m pipeline``.
"""

from __future__ import annotations

from recyclelora.cli.adapters import info, init
from recyclelora.cli.common import root_app
from recyclelora.cli.data import data_app
from recyclelora.cli.evaluate import eval_command, predict_command
from recyclelora.cli.model import analyze, export_app, merge
from recyclelora.cli.synth import synth
from recyclelora.cli.train import train_command

app = root_app(
    "recyclelora-cli", "RecycleLoRA: RRQR dual adapters for domain-generalised semantic segmentation."
)

data_app.command("synth")(synth)
app.add_typer(data_app, name="data")
app.command("init")(init)
app.command("info")(info)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("predict")(predict_command)
app.command("merge")(merge)
app.add_typer(export_app, name="export")
app.command("analyze")(analyze)
