"""Pooling.  Average pools are linear with non-negative weights (monotone).  Max pooling is
monotone in its input for the values; its backward routes the gradient to the argmax, which is
exactly known only where one entry's lower bound beats every other entry's upper bound: there
the entry gets the gradient, entries that may be the argmax get the hull of the gradient and 0,
and the rest get 0.  The rule reads the input bounds and ignores the concrete ``indices``."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from boundflow import rounding
from boundflow.domains.interval import arith
from boundflow.domains.interval.generic import accumulating
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import lohi, make

aten = torch.ops.aten


def _pair(v, default=None) -> tuple[int, int]:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return default
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _out_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    num = n + 2 * p - d * (k - 1) - 1
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


class _Geometry:
    def __init__(self, shape, kernel_size, stride, padding, dilation, ceil_mode):
        self.k = _pair(kernel_size)
        self.s = _pair(stride, self.k)
        self.p = _pair(padding, (0, 0))
        self.d = _pair(dilation, (1, 1))
        self.hw = (shape[-2], shape[-1])
        self.o = tuple(_out_size(self.hw[i], self.k[i], self.s[i], self.p[i], self.d[i], ceil_mode) for i in range(2))

    def windows(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """``(..., H, W)`` -> ``(..., OH, OW, KH*KW)``; out-of-range positions hold ``fill``."""
        span = [self.d[i] * (self.k[i] - 1) + 1 for i in range(2)]
        need = [(self.o[i] - 1) * self.s[i] + span[i] for i in range(2)]
        extra = [max(0, need[i] - (self.hw[i] + 2 * self.p[i])) for i in range(2)]
        lead = x.shape[:-2]
        x4 = x.reshape(-1, 1, *self.hw)
        xp = F.pad(x4, (self.p[1], self.p[1] + extra[1], self.p[0], self.p[0] + extra[0]), value=fill)
        u = xp.unfold(2, span[0], self.s[0]).unfold(3, span[1], self.s[1])
        u = u[:, :, : self.o[0], : self.o[1], :: self.d[0], :: self.d[1]]
        return u.reshape(*lead, self.o[0], self.o[1], self.k[0] * self.k[1])

    def index_windows(self, device) -> torch.Tensor:
        """Flat input index of every window position; -1 for padding (cached per geometry)."""
        return _index_windows(self.hw, self.k, self.s, self.p, self.d, self.o, str(device))


@functools.lru_cache(maxsize=64)
def _index_windows(hw, k, s, p, d, o, device: str) -> torch.Tensor:
    geo = _Geometry.__new__(_Geometry)
    geo.hw, geo.k, geo.s, geo.p, geo.d, geo.o = hw, k, s, p, d, o
    idx = torch.arange(hw[0] * hw[1], device=device, dtype=torch.float64).reshape(hw)
    return geo.windows(idx, -1.0).long()


def pool_index_windows(shape, args, device) -> torch.Tensor:
    """For ``max_pool2d`` arguments ``args = (kernel, stride, padding, dilation, ceil_mode)``
    (trailing ones optional) on an input of ``shape (..., H, W)``: the flat input position of
    every entry of every window, ``(OH, OW, KH*KW)``, with -1 for padding (torch's geometry,
    ``ceil_mode`` included)."""
    args = list(args) + [None] * (5 - len(args))
    kernel, stride, padding, dilation, ceil_mode = args[:5]
    geo = _Geometry(shape, kernel, stride, padding if padding is not None else 0, dilation or 1, bool(ceil_mode))
    win = geo.index_windows(device)
    _check_windows(win, geo)
    return win


def _check_windows(win: torch.Tensor, geo: _Geometry) -> None:
    """Refuse a geometry with a window made only of padding: torch returns -inf and an
    out-of-range index there (its backward then writes outside the gradient's memory)."""
    empty = ~(win >= 0).any(-1)
    if empty.any():
        from boundflow.errors import UnsupportedOperation

        at = tuple(torch.nonzero(empty)[0].tolist())
        raise UnsupportedOperation(
            f"max_pool2d(kernel={geo.k}, stride={geo.s}, padding={geo.p}, dilation={geo.d}) on a "
            f"{geo.hw[0]}x{geo.hw[1]} plane: output window {at} lies entirely in the padding (torch gives -inf "
            "and an invalid index there); use less padding or dilation"
        )


def _argmax_sets(w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window position: (certainly the argmax, possibly the argmax).

    Only the position of the largest upper bound can be certain, and it is when its lower bound
    beats the second-largest upper bound."""
    max_lo = w_lo.amax(-1, keepdim=True)
    possible = w_hi >= max_lo
    if w_hi.shape[-1] == 1:
        return torch.ones_like(possible), possible
    first = w_hi.argmax(-1, keepdim=True)
    second = w_hi.scatter(-1, first, -math.inf).amax(-1, keepdim=True)
    onehot = torch.zeros_like(possible).scatter_(-1, first, True)
    certain = onehot & (w_lo > second)
    return certain, possible


def max_grad_contributions(w_lo, w_hi, g_lo, g_hi) -> arith.Bounds:
    """Gradient bounds flowing to each candidate of a max over the last dim of ``w``, given
    gradient bounds ``g`` of the max (shape of ``w`` without its last dim): the certain argmax
    gets ``g``, other possible argmaxes the hull of ``g`` and 0 (ties share ``g``), the rest 0."""
    certain, possible = _argmax_sets(w_lo, w_hi)
    g_lo, g_hi = g_lo.unsqueeze(-1), g_hi.unsqueeze(-1)
    lo = torch.where(certain, g_lo, g_lo.clamp(max=0)).masked_fill_(~possible, 0)
    hi = torch.where(certain, g_hi, g_hi.clamp(min=0)).masked_fill_(~possible, 0)
    return lo, hi


@implements(aten.max_pool2d_with_indices.default)
def max_pool2d_with_indices(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """Values: max pooling of each bound (exact).  Indices: the integer interval from the first
    to the last flat input index of each window, which contains every possible argmax (the
    backward rule does not use them; it reads the input bounds)."""
    lo, hi = lohi(self)
    geo = _Geometry(lo.shape, kernel_size, stride, padding, dilation, ceil_mode)
    _check_windows(geo.index_windows(lo.device), geo)
    # the max over the window slots (strided views) equals torch's pooling and is faster
    # than its NCHW kernel on small planes
    v_lo = functools.reduce(torch.maximum, _slots(_padded(lo, geo, -math.inf), geo))
    v_hi = functools.reduce(torch.maximum, _slots(_padded(hi, geo, -math.inf), geo))
    idx = geo.index_windows(lo.device)
    big = torch.iinfo(torch.int64).max
    first = torch.where(idx >= 0, idx, big).amin(-1).expand(v_lo.shape)
    last = idx.amax(-1).expand(v_lo.shape)
    return make(v_lo, v_hi, exact=True), make(first, last, exact=True)


def _padded(x: torch.Tensor, geo: _Geometry, fill: float) -> torch.Tensor:
    """Pad so every window of every slot lies inside (``padding`` plus the ceil-mode tail)."""
    span = [geo.d[i] * (geo.k[i] - 1) + 1 for i in range(2)]
    need = [(geo.o[i] - 1) * geo.s[i] + span[i] for i in range(2)]
    extra = [max(0, need[i] - (geo.hw[i] + 2 * geo.p[i])) for i in range(2)]
    if not (geo.p[0] or geo.p[1] or extra[0] or extra[1]):
        return x
    return F.pad(x, (geo.p[1], geo.p[1] + extra[1], geo.p[0], geo.p[0] + extra[0]), value=fill)


def _slots(xp: torch.Tensor, geo: _Geometry) -> list[torch.Tensor]:
    """One strided view per window slot ``(i, j)``: entry ``[..., a, b]`` is the slot's element
    of window ``(a, b)``.  Within one slot, different windows never share an input position."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = geo.k, geo.s, geo.d, geo.o
    return [
        xp[..., i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]


_thr = aten.threshold_backward.default


def _max_pool_backward(lo, hi, g_lo, g_hi, geo: _Geometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Slot by slot (kh*kw strided views, no unfolding copies, no bool-mask selects):

    * slot k of a window is the certain argmax iff ``l_k > max_{m != k} u_m``: it gets ``g``;
    * it may be the argmax iff ``u_k >= max_m l_m``: it gets the hull of ``g`` and 0;
    * otherwise 0.

    ``threshold_backward(x, mask, 0.5)`` selects ``x`` where a 0/1 mask is 1 (0 elsewhere, inf
    safe).  Contributions are accumulated into the (padded) input gradient; overlapping windows
    add up.  Returns ``(grad_lo, grad_hi, magnitude)`` (magnitude only under sound rounding)."""
    lo_s = _slots(_padded(lo, geo, -math.inf), geo)
    hi_s = _slots(_padded(hi, geo, -math.inf), geo)
    n = len(lo_s)
    max_lo = functools.reduce(torch.maximum, lo_s)
    prefix = [None] * n
    suffix = [None] * n
    for k in range(1, n):
        prefix[k] = hi_s[k - 1] if k == 1 else torch.maximum(prefix[k - 1], hi_s[k - 1])
    for k in range(n - 2, -1, -1):
        suffix[k] = hi_s[k + 1] if k == n - 2 else torch.maximum(suffix[k + 1], hi_s[k + 1])
    g_lo_pos, g_lo_neg = g_lo.clamp(min=0), g_lo.clamp(max=0)
    g_hi_pos, g_hi_neg = g_hi.clamp(min=0), g_hi.clamp(max=0)
    dt = lo.dtype
    shape = _padded(lo, geo, 0.0).shape
    out_lo = lo.new_zeros(shape)
    out_hi = lo.new_zeros(shape)
    mag = lo.new_zeros(shape) if rounding.rounding_enabled() else None
    out_lo_s, out_hi_s = _slots(out_lo, geo), _slots(out_hi, geo)
    mag_s = _slots(mag, geo) if mag is not None else None
    for k in range(n):
        others = [t for t in (prefix[k], suffix[k]) if t is not None]
        if others:
            max_other = others[0] if len(others) == 1 else torch.maximum(others[0], others[1])
            certain = (lo_s[k] > max_other).to(dt)
        else:
            certain = torch.ones_like(lo_s[k])
        possible = (hi_s[k] >= max_lo).to(dt)
        c_lo = _thr(g_lo_pos, certain, 0.5).add_(_thr(g_lo_neg, possible, 0.5))
        c_hi = _thr(g_hi_neg, certain, 0.5).add_(_thr(g_hi_pos, possible, 0.5))
        out_lo_s[k].add_(c_lo)
        out_hi_s[k].add_(c_hi)
        if mag_s is not None:
            mag_s[k].add_(torch.maximum(c_lo.abs(), c_hi.abs()))

    def crop(t: torch.Tensor) -> torch.Tensor:
        return t[..., geo.p[0] : geo.p[0] + geo.hw[0], geo.p[1] : geo.p[1] + geo.hw[1]]

    return crop(out_lo), crop(out_hi), (crop(mag) if mag is not None else None)


@implements(aten.max_pool2d_with_indices_backward.default)
def max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    lo, hi = lohi(self)
    g_lo, g_hi = lohi(grad_output)
    geo = _Geometry(lo.shape, kernel_size, stride, padding, dilation, ceil_mode)
    _check_windows(geo.index_windows(lo.device), geo)
    r_lo, r_hi, mag = _max_pool_backward(lo, hi, g_lo, g_hi, geo)
    if mag is not None:
        n = math.prod(-(-(geo.d[i] * (geo.k[i] - 1) + 1) // geo.s[i]) for i in range(2)) + 1
        r_lo, r_hi = rounding.widen_abs(r_lo, r_hi, rounding.dot_error(n, mag))
        return make(r_lo, r_hi, rounded=True)
    overlapping = any(geo.s[i] < geo.d[i] * (geo.k[i] - 1) + 1 for i in range(2))
    return make(r_lo, r_hi, exact=not overlapping)


def _kernel_terms(kernel_size) -> int:
    k = _pair(kernel_size)
    return k[0] * k[1] + 1


accumulating(aten.avg_pool2d.default, lambda self, kernel_size, *a, **k: _kernel_terms(kernel_size))
accumulating(aten.avg_pool2d_backward.default, lambda grad, self, kernel_size, *a, **k: _kernel_terms(kernel_size))
accumulating(aten._adaptive_avg_pool2d.default, lambda self, output_size: math.prod(self.shape[-2:]) + 1)
accumulating(aten._adaptive_avg_pool2d_backward.default, lambda grad, self: math.prod(self.shape[-2:]) + 1)
