"""Deployment exports of a trained segmentor."""

from recyclelora.export.onnx import OnnxParity, OnnxParityError, export_onnx, verify_onnx
from recyclelora.export.quantize import QUANT_MODES, Int8Copy, calibration_windows, int8_copy, quantize_onnx

__all__ = ["QUANT_MODES", "Int8Copy", "OnnxParity", "OnnxParityError", "calibration_windows", "export_onnx",
           "int8_copy", "quantize_onnx", "verify_onnx"]
