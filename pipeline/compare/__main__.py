"""``python -m pipeline.compare``: the command line of :mod:`pipeline.compare.cli`."""

from pipeline.compare.cli import app

app()
