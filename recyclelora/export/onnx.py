"""ONNX export with torch's exporter (``torch.onnx.export(..., dynamo=True)``) and a parity check against torch.

Parity is measured on the same inputs: ``max_abs_diff = max |onnx - torch|``; the logit scale is
``scale = max |torch|`` over the batch, and ``max_rel_diff = max_abs_diff / scale`` (a per-element relative
error is ill-defined for logits near 0); ``argmax_agreement`` is the fraction of pixels whose predicted class is
the same in both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recyclelora.errors import UserError, require_extra
from recyclelora.eval.predictors import ONNX_CLASSES, ONNX_INPUT, ONNX_OUTPUT, OnnxPredictor, TorchPredictor
from recyclelora.io import atomic_path

#: Protobuf cannot serialise a model above 2 GiB: larger weights go to ``<file>.data`` beside the model.
_PROTOBUF_LIMIT = 2**31 - 1
#: onnx, onnxscript (torch's exporter) and onnxruntime come with the ``onnx`` extra, imported when exporting.
NEEDS_ONNX = "ONNX export"


class OnnxParityError(UserError):
    """The exported model's outputs differ from the PyTorch model's beyond tolerance."""


@dataclass(frozen=True)
class OnnxParity:
    """How closely the ONNX model reproduces the PyTorch model (see the module docstring)."""

    max_abs_diff: float
    max_rel_diff: float
    logit_scale: float
    argmax_agreement: float


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` (in eval mode) to ``path`` with input ``images`` and output ``logits``; the class set
    of a model loaded from a checkpoint goes into the file's metadata (``recyclelora.classes``).

    The spatial size is fixed to ``example``'s; the batch dimension is dynamic unless ``dynamic_batch=False``.
    The file is checked with ``onnx.checker`` (path form, so models over 2 GiB work) before it replaces
    ``path``; weights over 2 GiB are written to ``<path>.data`` beside it.
    """
    if example.ndim != 4 or example.shape[1] != 3:
        raise ValueError(f"example must be a (B, 3, H, W) image batch, got shape {tuple(example.shape)}")
    onnx, ir, _ = (require_extra(module, "onnx", NEEDS_ONNX) for module in ("onnx", "onnx_ir", "onnxscript"))
    path = Path(path)
    model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch")},)
        if example.shape[0] == 1:  # torch.export specialises size-1 dimensions to constants: trace with 2
            example = example.expand(2, -1, -1, -1)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    graph = program.model.graph
    if dynamic_batch and any(
        v.shape is None or isinstance(v.shape[0], int) for v in (*graph.inputs, *graph.outputs)
    ):
        raise ValueError(
            "torch.export fixed the batch dimension to a constant: the model's forward depends on the batch "
            "size; make it batch-agnostic or export with dynamic_batch=False"
        )
    info = getattr(model, "checkpoint_info", None)
    if info is not None:
        program.model.metadata_props[ONNX_CLASSES] = info.classes.to_json()
    initializers = graph.initializers.values()
    weight_bytes = sum(v.const_value.nbytes for v in initializers if v.const_value is not None)
    external = f"{path.name}.data" if weight_bytes > _PROTOBUF_LIMIT else None
    with atomic_path(path) as tmp:
        ir.save(program.model, tmp, format="protobuf", external_data=external)
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    inputs: torch.Tensor,
    *,
    rtol: float = 1e-3,
    min_agreement: float = 0.999,
    providers: list[str] | None = None,
) -> OnnxParity:
    """Run ``inputs`` through ``model`` and the ONNX file; raise :class:`OnnxParityError` when
    ``max_rel_diff > rtol`` or ``argmax_agreement < min_agreement``, else return the measured parity."""
    expected = TorchPredictor(model)(inputs).cpu()
    actual = OnnxPredictor(path, providers)(inputs).cpu()
    if actual.shape != expected.shape:
        raise OnnxParityError(
            f"ONNX output shape {tuple(actual.shape)} != torch output {tuple(expected.shape)}"
        )
    max_abs = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    parity = OnnxParity(
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / scale if scale > 0 else max_abs,
        logit_scale=scale,
        argmax_agreement=float((actual.argmax(1) == expected.argmax(1)).float().mean()),
    )
    if parity.max_rel_diff > rtol or parity.argmax_agreement < min_agreement:
        raise OnnxParityError(
            f"{path} does not reproduce the PyTorch model: max |diff| {max_abs:.3g} at logit scale {scale:.3g} "
            f"(relative {parity.max_rel_diff:.3g}, allowed {rtol:g}); argmax agreement "
            f"{parity.argmax_agreement:.4%} (needed {min_agreement:.2%}). Re-export with another opset or check "
            "the model for data-dependent control flow"
        )
    return parity
