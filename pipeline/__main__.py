"""``python -m pipeline <stage> ...``: run a DVC stage (or apply a preset) with the workspace's own code."""

from pipeline.cli import app

app(prog_name="python -m pipeline")
