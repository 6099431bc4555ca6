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
    if a.dim() >= 3 and b.dim() == 2:
        # (N, ..., k) @ (k, m) as one bmm over the first dimension: torch's matmul folds the
        # leading dimensions into the rows of an mm, which moves the batch out of the front
        # (the linear domain needs batch-first graphs)
        n, k, m = a.shape[0], b.shape[0], b.shape[1]
        return torch.bmm(a.reshape(n, -1, k), b.expand(n, k, m)).reshape(*a.shape[:-1], m)
    if a.dim() >= 4 or b.dim() >= 4:
        # batched products of matrices (attention: queries times keys): one bmm per head, each
        # over the batch, where torch's matmul would merge the batch with the heads into one
        # bmm (the linear domain needs the batch in front); no broadcast temporary
        lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a = a.expand(*lead, *a.shape[-2:]).reshape(lead[0], -1, *a.shape[-2:])
        b = b.expand(*lead, *b.shape[-2:]).reshape(lead[0], -1, *b.shape[-2:])
        heads = [torch.bmm(a[:, i], b[:, i]) for i in range(a.shape[1])]
        return torch.stack(heads, 1).reshape(*lead, a.shape[-2], b.shape[-1])
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
    if x.dim() == 4:
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)
    # other ranks as the affine map it is at inference: torch traces batch norm of a 2-D or 3-D
    # input with a transpose that moves the batch out of the front
    shape = (-1,) + (1,) * (x.dim() - 2)
    s = scale / torch.sqrt(var + epsilon)
    return x * s.reshape(shape) + (bias - mean * s).reshape(shape)


def _reshape(x, shape, allowzero=0, **_):
    shape = _ints(shape)
    shape = [x.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _squeeze(x, axes=None, **a):
    axes = a.get("axes", axes)
    if axes is None:
        return x.squeeze()
    axes = _ints(axes)
    for ax in sorted((v % x.dim() for v in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _unsqueeze(x, axes=None, **a):
    axes = a.get("axes", axes)
    axes = _ints(axes)
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


def _values(t) -> list:
    """The entries of a constant (a static input: shape, axes, scales...) as Python numbers,
    read outside any tracing mode (the importer only passes constants known at import here)."""
    if not isinstance(t, torch.Tensor):
        return list(t) if isinstance(t, (list, tuple)) else [t]
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return t.reshape(-1).tolist()


def _ints(t) -> list[int]:
    return [int(v) for v in _values(t)]


def _slice(x, starts=None, ends=None, axes=None, steps=None, **a):
    starts = _ints(a.get("starts", starts))
    ends = _ints(a.get("ends", ends))
    axes = _ints(a.get("axes", axes)) if (axes is not None or "axes" in a) else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    flips = []
    for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
        if sp == 0:
            raise OnnxImportError("ONNX Slice with step 0 is invalid")
        n = x.shape[ax]
        if sp > 0:
            st = max(0, min(n, st + n if st < 0 else st))
            en = max(0, min(n, en + n if en < 0 else en))
            idx[ax % x.dim()] = slice(st, en, sp)
        else:  # a negative step (ONNX clamps start to [0, n-1] and end to [-1, n-1])
            st = max(0, min(n - 1, st + n if st < 0 else st))
            en = max(-1, min(n - 1, en + n if en < 0 else en))
            keep = list(range(st, en, sp))
            # reversed selection: the flipped axis sliced forward
            if keep:
                flips.append(ax % x.dim())
                idx[ax % x.dim()] = slice(n - 1 - keep[0], n - 1 - keep[-1] + 1, -sp)
            else:
                idx[ax % x.dim()] = slice(0, 0)
    if flips:
        x = x.flip(flips)
    return x[tuple(idx)]


def _gather(x, indices, axis=0):
    axis = axis % x.dim()
    idx = indices.reshape(-1).long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)  # ONNX allows negative indices
    flat = torch.index_select(x, axis, idx)
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


def _pow(x, y):
    """``x ** y``; a constant scalar exponent arrives as a number (integer where it is one), so
    the domains see ``pow(x, p)`` with a known ``p``."""
    if isinstance(y, (int, float)):
        return torch.pow(x, int(y) if float(y).is_integer() else float(y))
    return torch.pow(x, y)


def _axes(axes, a: dict) -> list[int] | None:
    axes = a.get("axes", axes)
    if axes is None:
        return None
    return _ints(axes)


def _reduce(kind: str):
    def op(x, axes=None, keepdims=1, noop_with_empty_axes=0, **a):
        ax = _axes(axes, a)
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = list(range(x.dim()))
        ax = sorted({v % x.dim() for v in ax}) if x.dim() else []
        keep = bool(keepdims)
        if kind == "sum":
            return torch.sum(x, ax, keepdim=keep) if ax else x
        if kind == "mean":
            return torch.mean(x, ax, keepdim=keep) if ax else x
        if kind == "max":
            return torch.amax(x, ax, keepdim=keep) if ax else x
        if kind == "min":
            return torch.amin(x, ax, keepdim=keep) if ax else x
        raise AssertionError(kind)

    return op


def _variadic(fn):
    def op(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return op


def _argmax(x, axis=0, keepdims=1, select_last_index=0):
    if select_last_index:
        raise UnsupportedOperation("ONNX ArgMax with select_last_index=1 is not supported")
    return torch.argmax(x, axis, keepdim=bool(keepdims))


def _expand(x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


def _range(start, limit, delta):
    vals = [_values(v)[0] for v in (start, limit, delta)]
    return torch.arange(*vals, dtype=start.dtype)


def _where(c, x, y):
    return torch.where(c.bool() if c.dtype != torch.bool else c, x, y)


def _scatter_nd(data, indices, updates, reduction=b"none"):
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if reduction != "none":
        raise UnsupportedOperation(f"ONNX ScatterND with reduction={reduction!r} is not supported")
    idx = indices.long()
    k = idx.shape[-1]
    dims = torch.tensor(data.shape[:k], dtype=torch.long)
    idx = torch.where(idx < 0, idx + dims, idx)  # ONNX allows negative indices
    if data.dtype != updates.dtype:  # (a float constant made from a shape stays float32 in a .double() model)
        dtype = torch.promote_types(data.dtype, updates.dtype)
        data, updates = data.to(dtype), updates.to(dtype)
    return data.index_put(tuple(idx.reshape(-1, k).unbind(-1)), updates.reshape(-1, *data.shape[k:]))


def _tile(x, repeats):
    return x.repeat(*_ints(repeats))


def _one_hot(indices, depth, values, axis=-1):
    d = int(_values(depth)[0])
    idx = indices.long()
    idx = torch.where(idx < 0, idx + d, idx)
    oh = (idx.unsqueeze(-1) == torch.arange(d, dtype=torch.long)).to(values.dtype)
    out_dim = oh.dim()
    ax = axis % out_dim
    if ax != out_dim - 1:
        oh = oh.movedim(-1, ax)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return oh * (on - off) + off


def _layer_norm(x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
    dims = list(range(axis % x.dim(), x.dim()))
    mean = x.mean(dims, keepdim=True)
    c = x - mean
    var = (c * c).mean(dims, keepdim=True)
    y = c / torch.sqrt(var + epsilon) * scale
    return y + bias if bias is not None else y


def _source_index(out_len: int, in_len: int, scale: float, mode: str, nearest_mode: str | None):
    """Per output index along one axis, the source coordinate of ONNX ``Resize`` and, for
    nearest, the source index (``onnxruntime``'s formulas)."""
    import numpy as _np

    i = _np.arange(out_len, dtype=_np.float64)
    if mode == "half_pixel":
        x = (i + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        x = (i + 0.5) / scale - 0.5 if out_len > 1 else _np.zeros_like(i)
    elif mode == "align_corners":
        x = i * (in_len - 1) / (out_len - 1) if out_len > 1 else _np.zeros_like(i)
    elif mode == "asymmetric":
        x = i / scale
    elif mode == "half_pixel_symmetric":
        adj = out_len / (scale * in_len)
        x = (in_len / 2) * (1 - adj) + (i + 0.5) / scale - 0.5
    else:
        raise UnsupportedOperation(f"ONNX Resize coordinate_transformation_mode {mode!r} is not supported")
    if nearest_mode is None:
        return x
    if nearest_mode == "round_prefer_floor":
        j = _np.where(x - _np.floor(x) == 0.5, _np.floor(x), _np.round(x))
    elif nearest_mode == "round_prefer_ceil":
        j = _np.where(x - _np.floor(x) == 0.5, _np.ceil(x), _np.round(x))
    elif nearest_mode == "floor":
        j = _np.floor(x)
    elif nearest_mode == "ceil":
        j = _np.ceil(x)
    else:
        raise UnsupportedOperation(f"ONNX Resize nearest_mode {nearest_mode!r} is not supported")
    return _np.clip(j, 0, in_len - 1).astype(_np.int64)


def _resize(
    x,
    roi=None,
    scales=None,
    sizes=None,
    mode=b"nearest",
    coordinate_transformation_mode=b"half_pixel",
    nearest_mode=b"round_prefer_floor",
    **a,
):
    """ONNX ``Resize`` (and ``Upsample``), nearest or (bi)linear, axis by axis as selections and
    constant-weight sums of the input (affine in it), with onnxruntime's coordinate formulas."""

    def txt(v):
        return v.decode() if isinstance(v, bytes) else v

    mode, ctm, nm = txt(mode), txt(coordinate_transformation_mode), txt(nearest_mode)
    if (
        a.get("antialias")
        or a.get("axes") is not None
        or txt(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch"
    ):
        raise UnsupportedOperation("ONNX Resize with antialias, axes or keep_aspect_ratio_policy is not supported")
    if ctm == "tf_crop_and_resize":
        raise UnsupportedOperation("ONNX Resize tf_crop_and_resize is not supported")
    in_shape = list(x.shape)
    if sizes is not None and sizes.numel():
        out_shape = _ints(sizes)
        sc = [o / i for o, i in zip(out_shape, in_shape, strict=True)]
    else:
        sc = [float(v) for v in _values(scales)]
        out_shape = [int(math.floor(i * s)) for i, s in zip(in_shape, sc, strict=True)]
    if mode not in ("nearest", "linear"):
        raise UnsupportedOperation(f"ONNX Resize mode {mode!r} is not supported (nearest and linear are)")
    y = x
    for ax, (n_in, n_out, s) in enumerate(zip(in_shape, out_shape, sc, strict=True)):
        if n_in == n_out and s == 1.0:
            continue
        if ax == 0 and n_in == 1 and n_out == 1:
            continue
        if mode == "nearest":
            j = _source_index(n_out, n_in, s, ctm, nm)
            y = torch.index_select(y, ax, torch.from_numpy(j))
        else:
            import numpy as _np

            xs = _np.clip(_source_index(n_out, n_in, s, ctm, None), 0, n_in - 1)
            j0 = _np.floor(xs).astype(_np.int64)
            j1 = _np.minimum(j0 + 1, n_in - 1)
            w = torch.from_numpy(xs - j0).to(y.dtype if y.is_floating_point() else torch.float64)
            shape = [1] * y.dim()
            shape[ax] = n_out
            w = w.reshape(shape)
            y = (
                torch.index_select(y, ax, torch.from_numpy(j0)) * (1 - w)
                + torch.index_select(y, ax, torch.from_numpy(j1)) * w
            )
    return y


def _upsample(x, scales=None, mode=b"nearest", **a):
    return _resize(
        x, None, scales if scales is not None else torch.tensor(a["scales"]), None, mode, b"asymmetric", b"floor"
    )


OPS = {
    "Slice": _slice,
    "Gather": _gather,
    "Split": _split,
    "Pad": _pad,
    "Cast": _cast,
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
    "Pow": _pow,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Erf": torch.erf,
    "Abs": torch.abs,
    "Sign": torch.sign,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Reciprocal": torch.reciprocal,
    "Softplus": F.softplus,
    "ReduceSum": _reduce("sum"),
    "ReduceMean": _reduce("mean"),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "ArgMax": _argmax,
    "Where": _where,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "Not": torch.logical_not,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Expand": _expand,
    "Range": _range,
    "ScatterND": _scatter_nd,
    "Tile": _tile,
    "OneHot": _one_hot,
    "LayerNormalization": _layer_norm,
    "Resize": _resize,
    "Upsample": _upsample,
}

# inputs that must be known before the input is (shapes, axes, indices, bounds, exponents...):
# op -> positions; a node whose input there varies with the network input is refused at import
STATIC_INPUTS = {
    "Reshape": (1,),
    "Slice": (1, 2, 3, 4),
    "Pad": (1, 2),
    "Clip": (1, 2),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Range": (0, 1, 2),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "Split": (1,),
    "ConstantOfShape": (0,),
    "Gather": (1,),
    "OneHot": (1, 2),
    "ScatterND": (1,),
}
# inputs passed as a Python number where they are a constant of one element (so the domains see
# clamp(x, lo, hi) and pow(x, p) with known numbers)
SCALAR_INPUTS = {"Clip": (1, 2), "Pow": (1,)}
# step functions: zero gradients (the attacks use the identity's instead)
_STEPS = {"Sign", "Floor", "Ceil", "Round"}
# ops whose result does not depend on the values of their input, only on its shape
SHAPE_ONLY = {"Shape", "Size"}
# ops that select or rearrange elements of their first input (the others constant): applied to
# the input's element numbers they say which input elements a value holds
SELECTIONS = {"Gather", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Identity"}
_INTEGER_CASTS = {6, 7}  # Cast to INT32 / INT64: rounds toward zero


def _capturing(x) -> bool:
    """Whether ``x`` is being traced or transformed (graph capture, vmap, an interval tensor)
    rather than evaluated: values read as Python numbers there would be baked in."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if type(x) is not torch.Tensor or _get_current_dispatch_mode() is not None:
        return True
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


class OnnxModule(nn.Module):
    """Executes an ONNX graph with torch ops.  ``input_shape`` is the ONNX input shape.

    Constants are folded at import: every node whose inputs are all constants (initializers,
    ``Constant`` nodes, earlier folded results) is evaluated once, so the bound domains see only
    what varies with the input.  Float constants are buffers (they follow ``.double()`` and can
    be bounded weights); integer and boolean constants (shapes, axes, indices) are plain tensors
    that graph capture reads as values.  Shape arithmetic on the input's shape (``Shape``,
    ``Gather``, ``Concat``, ``Range`` ...) runs on concrete shapes outside tracing.  A model
    whose input has batch size 1 is evaluated batch by batch: a ``Reshape`` target whose leading
    entry is that 1 takes the batch size of the call (so ``Reshape(x, [1, -1])`` flattens each
    sample), which keeps such models batch-first for the linear domain.

    **Index inputs.**  Input elements that the graph reads only through a ``Cast`` to an integer
    (a patch position that starts a ``Slice`` or indexes a ``ScatterND``) are listed in
    ``index_inputs``; the module evaluates them, but no domain can capture it (the indices would
    be baked in): :meth:`pin` gives the model with those elements fixed, whose graph the
    domains read, and :mod:`boundflow.verify.cases` bounds the model case by case over the
    integer values a box allows.  An element read both as an index and as a value is refused."""

    # attacks only (boundflow.verify.pipeline): step functions pass gradients as the identity
    straight_through: bool = False

    def __init__(self, model, path: str = "<onnx>", pinned: dict[int, float] | None = None):
        super().__init__()
        from onnx import numpy_helper

        g = model.graph
        self.path = path
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        self._ops = {**OPS, "Softmax": _softmax(self.opset)}  # ops whose semantics depend on the opset
        inits = {t.name for t in g.initializer}
        self._consts: dict[str, str] = {}  # float constant name -> buffer name
        self._static: dict[str, torch.Tensor] = {}  # every constant known at import, as a tensor
        for i, t in enumerate(g.initializer):
            arr = numpy_helper.to_array(t)
            # float64 initializers stay float64 (rounding them to float32 changes the model)
            keep = arr.dtype in (np.float32, np.float64) or arr.dtype.kind != "f"
            self._add_const(t.name, torch.from_numpy(np.array(arr, dtype=arr.dtype if keep else np.float32)), f"c{i}")
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            raise OnnxImportError(f"{path}: expected one graph input, found {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = [d.dim_value or 1 for d in inputs[0].type.tensor_type.shape.dim]
        if len(g.output) != 1:
            raise OnnxImportError(f"{path}: expected one graph output, found {len(g.output)}")
        self.output_name = g.output[0].name
        self.nodes = []
        dynamic = {self.input_name}  # values that vary with the input
        shaped = set()  # values computed from the input's shape only (not its values)
        # values that select input elements: the input element numbers they hold
        selections = {self.input_name: torch.arange(math.prod(self.input_shape)).reshape(self.input_shape)}
        in_dtype = torch.float64 if inputs[0].type.tensor_type.elem_type == 11 else torch.float32
        discrete = set()  # values that vary with the input only through integer casts of it
        as_index, as_value = set(), set()  # input elements read as indices / as values
        for k, n in enumerate(g.node):
            label = n.name or f"node{k}"
            if n.op_type == "Constant":
                a = _attrs(n)
                if "value" in a:
                    arr = numpy_helper.to_array(a["value"])
                elif "value_float" in a or "value_int" in a:
                    arr = np.array(a.get("value_float", a.get("value_int")))
                elif "value_floats" in a or "value_ints" in a:
                    arr = np.array(a.get("value_floats", a.get("value_ints")))
                else:
                    raise UnsupportedOperation(f"{path}: node {k} ({label}): Constant without a value")
                self._add_const(n.output[0], torch.from_numpy(np.array(arr)), f"k{k}")
                continue
            if n.op_type not in self._ops and n.op_type not in SHAPE_ONLY:
                raise UnsupportedOperation(
                    f"{path}: node {k} ({label}) uses ONNX op {n.op_type!r}, which the importer does not "
                    f"support; supported: {', '.join(sorted(set(self._ops) | SHAPE_ONLY))}"
                )
            ins, attrs = list(n.input), _attrs(n)
            if n.op_type in SELECTIONS and ins[0] in selections and all(i in self._static for i in ins[1:] if i):
                args = [selections[ins[0]]] + [self._static[i] if i else None for i in ins[1:]]
                held = self._run(n.op_type, args, attrs, 1, label)[0]
                if pinned is not None and all(int(e) in pinned for e in held.reshape(-1).tolist()):
                    values = [float(pinned[int(e)]) for e in held.reshape(-1).tolist()]
                    self._add_const(n.output[0], torch.tensor(values, dtype=in_dtype).reshape(held.shape), f"p{k}")
                    continue
                selections[n.output[0]] = held
                dynamic.add(n.output[0])
                self.nodes.append((n.op_type, ins, list(n.output), attrs, label, False))
                continue
            if n.op_type == "Cast" and ins[0] in selections and int(attrs.get("to", 0)) in _INTEGER_CASTS:
                as_index.update(selections[ins[0]].reshape(-1).tolist())
                discrete.add(n.output[0])
                dynamic.add(n.output[0])
                self.nodes.append((n.op_type, ins, list(n.output), attrs, label, False))
                continue
            if n.op_type not in SHAPE_ONLY:
                for i in ins:
                    if i in selections:
                        as_value.update(selections[i].reshape(-1).tolist())
            if all(i in discrete for i in ins if i in dynamic) and any(i in discrete for i in ins):
                discrete.update(n.output)  # a function of index inputs alone: evaluated, never bounded
            for pos in STATIC_INPUTS.get(n.op_type, ()):
                if pos < len(ins) and ins[pos] in discrete:
                    continue  # an index input's function: read when the module is evaluated
                if pos < len(ins) and ins[pos] in dynamic and n.op_type not in ("Gather", "ScatterND"):
                    raise UnsupportedOperation(
                        f"{path}: node {k} ({label}, {n.op_type}): input {pos} ({ins[pos]}) varies with the network "
                        "input; it must be a constant"
                    )
            if n.op_type in SHAPE_ONLY:
                if ins[0] in dynamic or ins[0] in shaped:
                    shaped.update(n.output)
                    self.nodes.append((n.op_type, ins, list(n.output), attrs, label, True))
                    continue
            elif all(not i or i in self._static for i in ins):
                # every input is a constant: fold at import
                outs = self._run(n.op_type, [self._static[i] if i else None for i in ins], attrs, len(n.output), label)
                for name, o in zip(n.output, outs, strict=False):
                    self._add_const(name, o, f"f{k}_{len(self._static)}")
                continue
            if any(i in dynamic for i in ins if i):
                dynamic.update(n.output)
                self.nodes.append((n.op_type, ins, list(n.output), attrs, label, False))
            else:  # shape arithmetic: computed on concrete shapes, outside any tracing
                shaped.update(n.output)
                self.nodes.append((n.op_type, ins, list(n.output), attrs, label, True))
        if self.output_name not in dynamic:
            raise OnnxImportError(f"{path}: the output {self.output_name!r} does not depend on the input")
        if self.output_name in selections:
            as_value.update(selections[self.output_name].reshape(-1).tolist())
        both = sorted(as_index & as_value)
        if both:
            raise UnsupportedOperation(
                f"{path}: input elements {both[:5]} are read both as indices (Cast to an integer) and as values"
            )
        # input elements read only as indices (sorted flat positions); empty once pinned
        self.index_inputs: tuple[int, ...] = tuple(sorted(int(e) for e in as_index))
        self._proto = model if self.index_inputs else None  # what pin() imports again

    def pin(self, values: dict[int, float]) -> OnnxModule:
        """The model with the input elements ``values`` names (flat positions) fixed to the given
        values: equal to this model on every input that holds those values there, whatever the
        input says at those positions.  Pinning every index input gives a model the domains
        capture."""
        if self._proto is None:
            raise ValueError(f"{self.path}: the model reads no input element as an index; nothing to pin")
        n = math.prod(self.input_shape)
        bad = [p for p in values if not 0 <= int(p) < n]
        if bad:
            raise ValueError(f"{self.path}: pinned positions {bad[:5]} are outside the input's {n} elements")
        module = OnnxModule(self._proto, self.path, {int(p): float(v) for p, v in values.items()})
        dtypes = {b.dtype for b in self.buffers() if b.is_floating_point()}
        # in the precision this module computes in (``.double()`` included)
        return module.to(dtypes.pop()).train(self.training) if len(dtypes) == 1 else module.train(self.training)

    def _add_const(self, name: str, t: torch.Tensor, buffer: str) -> None:
        if t.is_floating_point():
            self.register_buffer(buffer, t)
            self._consts[name] = buffer
        self._static[name] = t

    def _run(self, op: str, args: list, attrs: dict, n_out: int, label: str) -> tuple:
        try:
            if op == "Shape":
                x = args[0]
                start, end = attrs.get("start", 0), attrs.get("end")
                return (torch.tensor(list(x.shape)[start:end], dtype=torch.int64),)
            if op == "Size":
                return (torch.tensor(args[0].numel(), dtype=torch.int64),)
            if op == "Reshape":
                x, shape = args[0], _ints(args[1])
                batch = getattr(self, "_batch", 1)
                if shape and shape[0] == 1 and batch > 1 and x.dim() and x.shape[0] == batch:
                    shape[0] = batch  # the model's batch of one is the call's batch
                return (_reshape(x, torch.tensor(shape), **attrs),)
            if op == "Split" and self._ops[op](*args, **attrs) is None:
                axis = attrs.get("axis", 0)
                size = args[0].shape[axis]
                return tuple(torch.split(args[0], [size // n_out + (i < size % n_out) for i in range(n_out)], axis))
            if self.straight_through and op in _STEPS and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                x = args[0]  # the step's value, the identity's gradient (attacks only)
                return (x + (self._ops[op](x) - x).detach(),)
            out = self._ops[op](*args, **attrs)
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            if isinstance(e, BoundFlowError):
                raise
            raise OnnxImportError(f"{self.path}: ONNX node {label} ({op}) failed: {e}") from e
        return out if isinstance(out, tuple) else (out,)

    def forward(self, x):
        from torch.utils._python_dispatch import _disable_current_modes

        if self.index_inputs and _capturing(x):
            raise UnsupportedOperation(
                f"{self.path}: input elements {list(self.index_inputs[:5])} are read as indices (Cast to an "
                "integer); no domain captures such a model: bound it per index value (boundflow.verify.cases)"
            )
        env = {self.input_name: x}
        for name, t in self._static.items():
            env[name] = getattr(self, self._consts[name]) if name in self._consts else t
        self._batch = x.shape[0] if self.input_shape and self.input_shape[0] == 1 and x.dim() else 1
        for op, ins, outs, attrs, label, on_shapes in self.nodes:
            if on_shapes:  # concrete shape arithmetic, never traced
                with _disable_current_modes():
                    args = [(self._static.get(i, env[i]) if i else None) for i in ins]
                    if op in SHAPE_ONLY:
                        args[0] = torch.empty(tuple(env[ins[0]].shape))
                    out = self._run(op, args, attrs, len(outs), label)
            else:
                static, scalar = STATIC_INPUTS.get(op, ()), SCALAR_INPUTS.get(op, ())
                args = [
                    (self._static[i] if (k in static and i in self._static) else env[i]) if i else None
                    for k, i in enumerate(ins)
                ]
                for k in scalar:
                    if k < len(ins) and ins[k] in self._static and self._static[ins[k]].numel() == 1:
                        args[k] = _values(self._static[ins[k]])[0]
                out = self._run(op, args, attrs, len(outs), label)
            for name, o in zip(outs, out, strict=False):
                env[name] = o
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
    """Max difference to onnxruntime on ``n`` random inputs, relative to ``1 + max |output|``;
    raises if above ``atol``."""
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
        # relative to the output's magnitude (float32 rounding in onnxruntime grows with it)
        scale = 1.0 + float(np.abs(ref).max()) if ref.size else 1.0
        worst = max(worst, float(np.abs(out.reshape(ref.shape) - ref).max()) / scale if ref.size else 0.0)
    if worst > atol:
        raise OnnxImportError(
            f"{module.path}: imported model differs from onnxruntime by {worst:.3g} (relative to 1 + max |output|) "
            f"> {atol}"
        )
    return worst
