"""The ``recyclelora-cli`` command line: one Typer app, one module per command group."""
