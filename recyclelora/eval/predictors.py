"""Inference backends behind one contract: ``predict(images (B, 3, h, w), normalised) -> scores (B, C, h, w)``.

Both predictors return float32 scores on the device of their input, so evaluation code is backend-agnostic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recyclelora.data.classes import ClassSet, classes_of_count
from recyclelora.errors import InvalidInputError, require_extra

ONNX_INPUT = "images"
ONNX_OUTPUT = "logits"
#: ONNX metadata entry holding the model's class set (:meth:`~recyclelora.data.classes.ClassSet.to_json`).
ONNX_CLASSES = "recyclelora.classes"
#: onnxruntime comes with the ``onnx`` extra; it is imported when an ONNX model is run, not before.
NEEDS_ORT = "Running an ONNX model (onnxruntime)"


class TorchPredictor:
    """Runs a PyTorch model in eval mode under ``torch.inference_mode``, optionally with autocast.

    ``device=None`` keeps the model where its parameters are; ``amp_dtype`` (e.g. ``torch.bfloat16`` on CUDA)
    enables autocast for the forward pass; scores are returned in float32. ``classes``: those the model
    predicts, as its checkpoint records them.
    """

    def __init__(
        self, model: nn.Module, device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None
    ) -> None:
        if amp_dtype is not None and amp_dtype not in (torch.bfloat16, torch.float16):
            raise InvalidInputError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype}")
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.model = model.to(self.device).eval()

    @property
    def classes(self) -> ClassSet:
        info = getattr(self.model, "checkpoint_info", None)
        return info.classes if info is not None else classes_of_count(self.model.num_classes)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None),
        ):
            scores = self.model(images.to(self.device))
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"the model must return a (B, C, h, w) tensor, got {type(scores).__name__}")
        return scores.to(device=images.device, dtype=torch.float32)


def default_providers() -> list[str]:
    """onnxruntime providers to use: CUDA first where this onnxruntime build has it, then CPU."""
    available = require_extra("onnxruntime", "onnx", NEEDS_ORT).get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxPredictor:
    """Runs an exported model (input ``images``, output ``logits``) with an onnxruntime session; ``classes``:
    those it predicts, from its metadata."""

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no ONNX model at {path}: export one with recyclelora.export.export_onnx"
            )
        ort = require_extra("onnxruntime", "onnx", NEEDS_ORT)
        self.session = ort.InferenceSession(str(path), providers=providers or default_providers())
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if ONNX_INPUT not in inputs or ONNX_OUTPUT not in outputs:
            raise InvalidInputError(
                f"{path} has inputs {inputs} and outputs {outputs}; expected input {ONNX_INPUT!r} and output "
                f"{ONNX_OUTPUT!r}: export it with recyclelora.export.export_onnx"
            )
        self.input_shape = self.session.get_inputs()[inputs.index(ONNX_INPUT)].shape
        recorded = self.session.get_modelmeta().custom_metadata_map.get(ONNX_CLASSES)
        count = self.session.get_outputs()[outputs.index(ONNX_OUTPUT)].shape[1]
        self.classes: ClassSet = (
            ClassSet.from_json(recorded) if recorded else classes_of_count(count if isinstance(count, int) else 0)
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for axis, (want, got) in enumerate(zip(self.input_shape, images.shape)):
            if isinstance(want, int) and want != got:
                raise InvalidInputError(
                    f"the ONNX model takes inputs of shape {self.input_shape}, got {tuple(images.shape)} "
                    f"(axis {axis}): use sliding windows of the exported size or export with that size"
                )
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        (scores,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: array})
        return torch.from_numpy(scores).to(device=images.device, dtype=torch.float32)
