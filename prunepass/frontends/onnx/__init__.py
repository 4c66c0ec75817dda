"""The ONNX frontend: an .onnx file -> the canonical IR, and prune plans applied back to
the ONNX graph (onnx protobuf editing, onnxruntime for running and measuring)."""
from prunepass.frontends.onnx.adapter import OnnxModel

__all__ = ["OnnxModel"]
