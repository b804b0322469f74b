"""Deployment exports of a trained segmentor."""

from recyclelora.export.onnx import OnnxParity, OnnxParityError, export_onnx, verify_onnx
from recyclelora.export.quantize import QUANT_MODES, calibration_windows, quantize_onnx

__all__ = ["QUANT_MODES", "OnnxParity", "OnnxParityError", "calibration_windows", "export_onnx", "quantize_onnx",
           "verify_onnx"]
