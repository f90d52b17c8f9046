"""Exports of grounded's models for other runtimes: SAM's prompt encoder and mask decoder (standard
and split), int8 copies and MobileSAM's encoder as ONNX graphs for the annotation page; for a SAM 2 /
2.1 model, its standard graph (which also takes the high-res maps) and the int8 copy."""

from .onnx import EXPORT_VERSION, export_onnx

__all__ = ["EXPORT_VERSION", "export_onnx"]
