"""DVC stage glue: each stage reads ``params.yaml``, calls :mod:`recyclelora` and records itself in MLflow."""
