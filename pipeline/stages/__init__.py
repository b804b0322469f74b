"""The DVC stages, one module each: a documented function doing the work and a ``run_*`` entry that validates
``params.yaml``, records itself as an MLflow child run and writes its DVC outputs atomically.

``run_<name>`` imports ``pipeline.stages.<name>`` on first use, so a stage process imports its own stage
only (the data stage never imports the training loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recyclelora._lazy import lazy_attributes

__all__ = [
    "run_analyze",
    "run_data",
    "run_evaluate",
    "run_export",
    "run_init",
    "run_merge",
    "run_package",
    "run_train",
    "run_weights",
]

__getattr__, __dir__ = lazy_attributes(
    __name__, {name: f"{__name__}.{name[len('run_') :]}" for name in __all__}
)

if TYPE_CHECKING:
    from pipeline.stages.analyze import run_analyze
    from pipeline.stages.data import run_data
    from pipeline.stages.evaluate import run_evaluate
    from pipeline.stages.export import run_export
    from pipeline.stages.init import run_init
    from pipeline.stages.merge import run_merge
    from pipeline.stages.package import run_package
    from pipeline.stages.train import run_train
    from pipeline.stages.weights import run_weights
