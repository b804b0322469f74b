"""The merged segmentor as an MLflow pyfunc model: RGB images in, trainId label maps out.

The model scores each image as the ``evaluate`` stage does (its sliding windows, ``data.val_transform``'s
resize rule and normalisation), through the library's predict path (:mod:`recyclelora.eval.predict`, the one
``recyclelora-cli predict`` runs), so a served prediction equals the CLI's PNG. Input: a uint8 tensor
``(N, H, W, 3)`` (images of one size per call); output: uint8 trainIds ``(N, H, W)``.

MLflow saves this file as the model's code ("models from code": no pickle) and runs it when the model is
loaded, so it imports :mod:`recyclelora` (installed wherever the model is served) and nothing of ``pipeline``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
from mlflow.models import ModelSignature, set_model
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import Schema, TensorSpec

from recyclelora.config import EvalConfig
from recyclelora.data.transform_config import EvalTransformConfig
from recyclelora.eval.predict import (
    InferenceConfig,
    InferencePredictor,
    image_input,
    label_map,
    torch_predictor,
)
from recyclelora.eval.sliding import SlidingWindowConfig
from recyclelora.train.distributed import resolve_device

#: The model's artifact holding the merged checkpoint (safetensors).
CHECKPOINT = "checkpoint"
#: Distributions the model imports, pinned to the versions it was saved with.
REQUIREMENTS = ("recyclelora", "mlflow", "torch", "timm", "safetensors", "numpy")
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
)


def model_config(eval_config: EvalConfig, transform: EvalTransformConfig) -> dict[str, Any]:
    """The inference settings the model keeps (its MLflow ``model_config``): the evaluation's windows, or
    ``None`` for whole images, and ``transform``'s resize rule and normalisation."""
    windows = SlidingWindowConfig((eval_config.crop,) * 2, (eval_config.stride,) * 2)
    sliding = None if eval_config.whole else asdict(windows)
    return {"sliding": sliding, **asdict(transform)}


def inference_config(config: dict[str, Any]) -> InferenceConfig:
    """The :class:`~recyclelora.eval.predict.InferenceConfig` of a :func:`model_config`."""
    sliding = config["sliding"]
    return InferenceConfig(
        sliding=None if sliding is None else SlidingWindowConfig(**sliding),
        size=config["size"],
        short_edge=config["short_edge"],
        fit=config["fit"],
    )


def requirements() -> list[str]:
    """:data:`REQUIREMENTS` pinned to the installed versions."""
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def input_example(config: dict[str, Any]) -> np.ndarray:
    """A mid-grey image of one window (or 56 x 56 for whole-image models), as a batch of one."""
    height, width = (56, 56) if config["sliding"] is None else config["sliding"]["crop"]
    return np.full((1, height, width, 3), 128, np.uint8)


class SegmentationModel(PythonModel):
    """The merged checkpoint (artifact :data:`CHECKPOINT`) scored as its ``model_config`` says, on CUDA when
    available."""

    def load_context(self, context: PythonModelContext) -> None:
        self.device = resolve_device("auto")
        self.config = context.model_config
        self.predict_scores = InferencePredictor(
            torch_predictor(context.artifacts[CHECKPOINT], self.device), inference_config(self.config)
        )

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """trainIds ``(N, H, W)`` of the RGB images ``model_input`` ``(N, H, W, 3)``."""
        mean, std = self.config["mean"], self.config["std"]
        maps = [
            label_map(self.predict_scores, image_input(pixels, self.device, mean, std))
            for pixels in model_input
        ]
        return np.stack([labels.to("cpu", torch.uint8).numpy() for labels in maps])


def pyfunc_arguments(checkpoint: str | os.PathLike[str], config: dict[str, Any]) -> dict[str, Any]:
    """Arguments of ``mlflow.pyfunc.save_model`` / ``log_model`` for ``checkpoint`` scored as ``config``
    (:func:`model_config`) says: this file as the model's code, signature, input example, requirements."""
    return {
        "python_model": __file__,
        "artifacts": {CHECKPOINT: os.fspath(checkpoint)},
        "model_config": config,
        "signature": SIGNATURE,
        "input_example": input_example(config),
        "pip_requirements": requirements(),
    }


set_model(SegmentationModel())
