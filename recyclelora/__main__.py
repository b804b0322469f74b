"""``python -m recyclelora ...`` runs the CLI (``torchrun -m recyclelora train ...`` for multi-GPU)."""

from recyclelora.cli.main import app

app()
