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
    _no_auto_pad("Conv", a)
    begin, sym = _onnx_pads_to_torch(list(pads))
    if not sym:
        x = F.pad(x, [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])])
        begin = [0] * k
    f = F.conv1d if k == 1 else F.conv2d if k == 2 else F.conv3d
    return f(x, w, b, stride=stride, padding=begin, dilation=dil, groups=a.get("group", 1))


def _pool(kind):
    def op(x, **a):
        _no_auto_pad(f"{kind}Pool", a)
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


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _slice(x, starts=None, ends=None, axes=None, steps=None, **a):
    starts = _ints(a.get("starts", starts))
    ends = _ints(a.get("ends", ends))
    axes = _ints(a.get("axes", axes)) if (axes is not None or "axes" in a) else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
        if sp <= 0:
            raise UnsupportedOperation("ONNX Slice with non-positive steps is not supported")
        n = x.shape[ax]
        st = max(0, min(n, st + n if st < 0 else st))
        en = max(0, min(n, en + n if en < 0 else en))
        idx[ax % x.dim()] = slice(st, en, sp)
    return x[tuple(idx)]


def _gather(x, indices, axis=0):
    if indices.dim() == 0:
        return x.select(axis, int(indices))
    flat = torch.index_select(x, axis, indices.reshape(-1).long())
    shape = list(x.shape[: axis % x.dim()]) + list(indices.shape) + list(x.shape[axis % x.dim() + 1 :])
    return flat.reshape(shape)


def _split(x, split=None, axis=0, num_outputs=None, **a):
    split = a.get("split", split)
    if split is None:
        return None  # resolved with the node's output count in forward
    return tuple(torch.split(x, _ints(split), dim=axis))


def _pad(x, pads=None, value=None, mode=b"constant", **a):
    pads = _ints(a.get("pads", pads))
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise UnsupportedOperation(f"ONNX Pad mode {mode!r} is not supported")
    v = a.get("value", value)
    v = float(v) if v is not None and not isinstance(v, torch.Tensor) else (float(v) if v is not None else 0.0)
    k = len(pads) // 2
    torch_pads = [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])]
    return F.pad(x, torch_pads, value=v)


_ONNX_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


def _cast(x, to):
    dt = _ONNX_DTYPES.get(int(to))
    if dt is None:
        raise UnsupportedOperation(f"ONNX Cast to type {to} is not supported")
    if dt.is_floating_point and x.is_floating_point():
        if dt == torch.float16:
            # a narrowing cast rounds (up to 2^-11 relative): bounds that ignored it could
            # prove properties onnxruntime's model violates
            raise UnsupportedOperation("ONNX Cast to FLOAT16 (a narrowing float cast that rounds) is not supported")
        return x  # FLOAT/DOUBLE: keep the computation's float precision (bounds are in float64)
    return x.to(dt)


def _softmax(opset: int):
    def op(x, axis=None):
        if opset >= 13:
            return torch.softmax(x, -1 if axis is None else axis)
        # before opset 13: flatten to 2-D at ``axis`` (default 1), softmax over the second dim
        axis = (1 if axis is None else axis) % x.dim()
        lead = math.prod(x.shape[:axis]) if axis else 1
        return torch.softmax(x.reshape(lead, -1), -1).reshape(x.shape)

    return op


def _no_auto_pad(op: str, a: dict) -> None:
    pad = a.get("auto_pad", b"NOTSET")
    pad = pad.decode() if isinstance(pad, bytes) else pad
    if pad not in ("NOTSET", "VALID"):
        raise UnsupportedOperation(f"ONNX {op} with auto_pad={pad} is not supported; export with explicit pads")


def _constant_of_shape(shape, value=None):
    from onnx import numpy_helper

    v = numpy_helper.to_array(value).reshape(-1)[0].item() if value is not None else 0.0
    return torch.full(_ints(shape), v, dtype=torch.float32 if isinstance(v, float) else torch.int64)


def _conv_transpose(x, w, b=None, **a):
    k = len(w.shape) - 2
    stride = _pair(a.get("strides", 1), k)
    dil = _pair(a.get("dilations", 1), k)
    pads = list(a.get("pads", [0] * (2 * k)))
    begin, sym = _onnx_pads_to_torch(pads)
    if not sym or "output_shape" in a:
        raise UnsupportedOperation("ONNX ConvTranspose with asymmetric pads or output_shape is not supported")
    out_pad = _pair(a.get("output_padding", 0), k)
    f = F.conv_transpose1d if k == 1 else F.conv_transpose2d
    return f(x, w, b, stride=stride, padding=begin, output_padding=out_pad, groups=a.get("group", 1), dilation=dil)


OPS = {
    "Slice": _slice,
    "Gather": _gather,
    "Split": _split,
    "Pad": _pad,
    "Cast": _cast,
    "Shape": lambda x, **a: torch.tensor(list(x.shape), dtype=torch.int64),
    "ConstantOfShape": _constant_of_shape,
    "ConvTranspose": _conv_transpose,
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
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        self._ops = {**OPS, "Softmax": _softmax(self.opset)}  # ops whose semantics depend on the opset
        inits = {t.name for t in g.initializer}
        self._consts: dict[str, str] = {}
        for i, t in enumerate(g.initializer):
            arr = numpy_helper.to_array(t)
            name = f"c{i}"
            # float64 initializers stay float64 (rounding them to float32 changes the model)
            keep = arr.dtype in (np.float32, np.float64) or arr.dtype.kind != "f"
            tensor = torch.from_numpy(np.array(arr, dtype=arr.dtype if keep else np.float32))
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
            if n.op_type not in self._ops:
                raise UnsupportedOperation(
                    f"{path}: node {k} ({n.name or 'unnamed'}) uses ONNX op {n.op_type!r}, which the importer does not "
                    f"support; supported: {', '.join(sorted(self._ops))}"
                )
            self.nodes.append((n.op_type, list(n.input), list(n.output), _attrs(n), n.name or f"node{k}"))

    def forward(self, x):
        env = {self.input_name: x}
        for name, buf in self._consts.items():
            env[name] = getattr(self, buf)
        for op, ins, outs, attrs, label in self.nodes:
            args = [env[i] if i else None for i in ins]
            try:
                if op == "Split" and self._ops[op](*args, **attrs) is None:
                    axis = attrs.get("axis", 0)
                    n_out = len(outs)
                    size = args[0].shape[axis]
                    out = tuple(torch.split(args[0], [size // n_out + (i < size % n_out) for i in range(n_out)], axis))
                else:
                    out = self._ops[op](*args, **attrs)
            except (RuntimeError, TypeError, ValueError) as e:
                if isinstance(e, BoundFlowError):
                    raise
                raise OnnxImportError(f"{self.path}: ONNX node {label} ({op}) failed: {e}") from e
            if isinstance(out, tuple):
                for name, o in zip(outs, out, strict=False):
                    env[name] = o
            else:
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
    double = next(i for i in sess.get_inputs() if i.name == module.input_name).type == "tensor(double)"
    for _ in range(n):
        x = torch.rand(module.input_shape, generator=g) * 2 - 1
        x = x.double() if double else x
        ref = sess.run(None, {module.input_name: x.numpy()})[0]
        with torch.no_grad():
            out = module(x).numpy()
        worst = max(worst, float(np.abs(out.reshape(ref.shape) - ref).max()))
    if worst > atol:
        raise OnnxImportError(f"{module.path}: imported model differs from onnxruntime by {worst:.3g} > {atol}")
    return worst
