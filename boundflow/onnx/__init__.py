"""ONNX import and VNN-LIB specifications."""

from boundflow.onnx.importer import OnnxImportError, OnnxModule, check_against_onnxruntime, load_onnx
from boundflow.onnx.vnnlib import Disjunct, VnnlibError, parse_vnnlib

__all__ = [
    "Disjunct",
    "OnnxImportError",
    "OnnxModule",
    "VnnlibError",
    "check_against_onnxruntime",
    "load_onnx",
    "parse_vnnlib",
]
