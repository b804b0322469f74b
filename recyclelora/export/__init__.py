"""Deployment exports of a trained segmentor."""

from recyclelora.export.onnx import OnnxParity, OnnxParityError, export_onnx, verify_onnx

__all__ = ["OnnxParity", "OnnxParityError", "export_onnx", "verify_onnx"]
