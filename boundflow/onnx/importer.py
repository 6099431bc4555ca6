"""ONNX → ``torch.nn.Module`` of ordinary torch ops (so every BoundFlow domain runs on it).

Uses the ``onnx`` package directly.  The module executes the ONNX nodes in graph order with
torch functions; initializers become buffers.  ``load_onnx(path, check=True)`` cross-checks the
imported model against onnxruntime on random inputs."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boundflow.errors import BoundFlowError, UnsupportedOperation

__all__ = ["OnnxModule", "load_onnx", "OnnxImportError", "check_against_onnxruntime"]


class OnnxImportError(BoundFlowError, ValueError):
    """A malformed or unsupported ONNX file."""


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pair(v, n=2):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


def _onnx_pads_to_torch(pads: list[int]) -> tuple[list[int], bool]:
    """ONNX ``[x1_begin, x2_begin, x1_end, x2_end]`` → symmetric torch padding if possible."""
    k = len(pads) // 2
    begin, end = pads[:k], pads[k:]
    return begin, begin == end


def _matmul(a, b):
    """``numpy.matmul`` semantics without torch's in-place ``squeeze_`` for 1-D operands (which
    a tensor subclass cannot follow)."""
    if b.dim() == 1:
        return torch.matmul(a, b.unsqueeze(-1)).squeeze(-1)
    if a.dim() == 1:
        return torch.matmul(a.unsqueeze(0), b).squeeze(-2)
    return torch.matmul(a, b)


def _gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    if transA:
        a = a.transpose(-1, -2)
    if transB:
        b = b.transpose(-1, -2)
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _flatten(x, axis=1):
    axis = axis % x.dim() if x.dim() else 0
    lead = math.prod(x.shape[:axis]) if axis else 1
    return x.reshape(lead, -1)


def _conv(x, w, b=None, **a):
    k = len(w.shape) - 2
    stride = _pair(a.get("strides", 1), k)
    dil = _pair(a.get("dilations", 1), k)
    pads = a.get("pads", [0] * (2 * k))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedOperation("ONNX Conv with auto_pad is not supported; export with explicit pads")
    begin, sym = _onnx_pads_to_torch(list(pads))
    if not sym:
        x = F.pad(x, [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])])
        begin = [0] * k
    f = F.conv1d if k == 1 else F.conv2d if k == 2 else F.conv3d
    return f(x, w, b, stride=stride, padding=begin, dilation=dil, groups=a.get("group", 1))


def _pool(kind):
    def op(x, **a):
        k = list(a["kernel_shape"])
        n = len(k)
        stride = _pair(a.get("strides", 1), n)
        pads = list(a.get("pads", [0] * (2 * n)))
        begin, sym = _onnx_pads_to_torch(pads)
        if not sym:
            raise UnsupportedOperation(f"ONNX {kind}Pool with asymmetric pads is not supported")
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "Max":
            dil = _pair(a.get("dilations", 1), n)
            f = F.max_pool1d if n == 1 else F.max_pool2d
            return f(x, k, stride, begin, dil, ceil_mode=ceil)
        f = F.avg_pool1d if n == 1 else F.avg_pool2d
        return f(x, k, stride, begin, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))

    return op


def _bn(x, scale, bias, mean, var, epsilon=1e-5, **_):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)


def _reshape(x, shape, allowzero=0, **_):
    shape = [int(s) for s in shape.tolist()]
    shape = [x.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _squeeze(x, axes=None, **a):
    axes = a.get("axes", axes)
    if axes is None:
        return x.squeeze()
    axes = [int(v) for v in (axes.tolist() if isinstance(axes, torch.Tensor) else axes)]
    for ax in sorted((v % x.dim() for v in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(x, axes=None, **a):
    axes = a.get("axes", axes)
    axes = [int(v) for v in (axes.tolist() if isinstance(axes, torch.Tensor) else axes)]
    out_dim = x.dim() + len(axes)
    for ax in sorted(v % out_dim for v in axes):
        x = x.unsqueeze(ax)
    return x


def _clip(x, lo=None, hi=None, **a):
    lo = a.get("min", lo)
    hi = a.get("max", hi)
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype)) if isinstance(lo, torch.Tensor) else x.clamp(min=lo)
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype)) if isinstance(hi, torch.Tensor) else x.clamp(max=hi)
    return x


OPS = {
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "Neg": lambda a: -a,
    "Relu": torch.relu,
    "LeakyRelu": lambda x, alpha=0.01: F.leaky_relu(x, alpha),
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Softmax": lambda x, axis=-1: torch.softmax(x, axis),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda x, perm=None: x.permute(*perm) if perm is not None else x.permute(*reversed(range(x.dim()))),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda *xs, axis: torch.cat(list(xs), axis),
    "Identity": lambda x: x,
    "Dropout": lambda x, *rest, **a: x,
    "Conv": _conv,
    "MaxPool": _pool("Max"),
    "AveragePool": _pool("Average"),
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "BatchNormalization": _bn,
    "Clip": _clip,
}


class OnnxModule(nn.Module):
    """Executes an ONNX graph with torch ops.  ``input_shape`` is the ONNX input shape."""

    def __init__(self, model, path: str = "<onnx>"):
        super().__init__()
        from onnx import numpy_helper

        g = model.graph
        self.path = path
        inits = {t.name for t in g.initializer}
        self._consts: dict[str, str] = {}
        for i, t in enumerate(g.initializer):
            arr = numpy_helper.to_array(t)
            name = f"c{i}"
            tensor = torch.from_numpy(np.array(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype))
            self.register_buffer(name, tensor)
            self._consts[t.name] = name
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            raise OnnxImportError(f"{path}: expected one graph input, found {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = [d.dim_value or 1 for d in inputs[0].type.tensor_type.shape.dim]
        if len(g.output) != 1:
            raise OnnxImportError(f"{path}: expected one graph output, found {len(g.output)}")
        self.output_name = g.output[0].name
        self.nodes = []
        for k, n in enumerate(g.node):
            if n.op_type == "Constant":
                a = _attrs(n)
                if "value" not in a:
                    raise UnsupportedOperation(f"{path}: node {k} ({n.name or n.op_type}): Constant without 'value'")
                arr = numpy_helper.to_array(a["value"])
                name = f"k{k}"
                self.register_buffer(name, torch.from_numpy(np.array(arr)))
                self._consts[n.output[0]] = name
                continue
            if n.op_type not in OPS:
                raise UnsupportedOperation(
                    f"{path}: node {k} ({n.name or 'unnamed'}) uses ONNX op {n.op_type!r}, which the importer does not "
                    f"support; supported: {', '.join(sorted(OPS))}"
                )
            self.nodes.append((n.op_type, list(n.input), list(n.output), _attrs(n), n.name or f"node{k}"))

    def forward(self, x):
        env = {self.input_name: x}
        for name, buf in self._consts.items():
            env[name] = getattr(self, buf)
        for op, ins, outs, attrs, label in self.nodes:
            args = [env[i] if i else None for i in ins]
            try:
                out = OPS[op](*args, **attrs)
            except (RuntimeError, TypeError, ValueError) as e:
                if isinstance(e, BoundFlowError):
                    raise
                raise OnnxImportError(f"{self.path}: ONNX node {label} ({op}) failed: {e}") from e
            env[outs[0]] = out
        return env[self.output_name]


def load_onnx(path: str | Path, check: bool = False, atol: float = 1e-5) -> OnnxModule:
    """Import ``.onnx`` or ``.onnx.gz``; with ``check``, compare against onnxruntime."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ONNX file at {path}")
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises several types for malformed files
        raise OnnxImportError(f"{path}: not a valid ONNX model: {e}") from e
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset and not 7 <= opset <= 21:
        raise OnnxImportError(f"{path}: opset {opset} is outside the supported range 8-18")
    module = OnnxModule(model, str(path)).eval()
    if check:
        check_against_onnxruntime(module, data, atol=atol)
    return module


def check_against_onnxruntime(module: OnnxModule, data: bytes, n: int = 5, atol: float = 1e-5, seed: int = 0) -> float:
    """Max abs difference to onnxruntime on ``n`` random inputs; raises if above ``atol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(n):
        x = torch.rand(module.input_shape, generator=g) * 2 - 1
        ref = sess.run(None, {module.input_name: x.numpy()})[0]
        with torch.no_grad():
            out = module(x).numpy()
        worst = max(worst, float(np.abs(out.reshape(ref.shape) - ref).max()))
    if worst > atol:
        raise OnnxImportError(f"{module.path}: imported model differs from onnxruntime by {worst:.3g} > {atol}")
    return worst
