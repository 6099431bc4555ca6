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
    stride = stride if stride else kernel_size
    v_lo = F.max_pool2d(lo, kernel_size, stride, padding, dilation, ceil_mode)
    v_hi = F.max_pool2d(hi, kernel_size, stride, padding, dilation, ceil_mode)
    geo = _Geometry(lo.shape, kernel_size, stride, padding, dilation, ceil_mode)
    idx = geo.index_windows(lo.device)
    big = torch.iinfo(torch.int64).max
    first = torch.where(idx >= 0, idx, big).amin(-1).expand(v_lo.shape)
    last = idx.amax(-1).expand(v_lo.shape)
    return make(v_lo, v_hi, exact=True), make(first, last, exact=True)


def _non_overlapping(geo: _Geometry) -> bool:
    return (
        geo.s == geo.k
        and geo.p == (0, 0)
        and geo.d == (1, 1)
        and all(geo.o[i] * geo.k[i] <= geo.hw[i] for i in range(2))
    )


def _upsample(t: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    """Per-window values onto their (non-overlapping) input positions; uncovered rows and
    columns (the remainder cropped by floor mode) get 0."""
    (kh, kw) = geo.k
    up = t.repeat_interleave(kh, -2).repeat_interleave(kw, -1)
    pad_h, pad_w = geo.hw[0] - up.shape[-2], geo.hw[1] - up.shape[-1]
    if pad_h or pad_w:
        up = F.pad(up, (0, pad_w, 0, pad_h))
    return up


def _backward_non_overlapping(lo, hi, g_lo, g_hi, geo: _Geometry, kernel_size, stride, ceil_mode):
    """Fast path with torch's own pooling kernels: windows whose argmax is certain route the
    gradient through ``max_pool2d_with_indices_backward`` with the argmax of the upper bounds;
    the other windows give the hull of their gradient and 0 to every position that may be the
    argmax (upper bound >= the window's largest lower bound)."""
    pool = aten.max_pool2d_with_indices.default
    k, s = list(geo.k), list(geo.s)
    max_lo, _ = pool(lo, k, s, [0, 0], [1, 1], ceil_mode)
    _, arg_hi = pool(hi, k, s, [0, 0], [1, 1], ceil_mode)
    lead = lo.shape[:-2]
    flat_lo = lo.reshape(*lead, -1)
    l_at_arg = flat_lo.gather(-1, arg_hi.reshape(*lead, -1)).reshape(arg_hi.shape)
    # certain iff no other upper bound reaches the lower bound at the argmax of the uppers
    count = F.avg_pool2d((hi >= _upsample(l_at_arg, geo)).to(lo.dtype), k, s, 0, ceil_mode, divisor_override=1)
    certain = count <= 1.5
    possible = hi >= _upsample(max_lo, geo)

    def route(g: torch.Tensor, clamp_max: bool) -> torch.Tensor:
        sure = aten.max_pool2d_with_indices_backward.default(
            torch.where(certain, g, 0.0), hi, k, s, [0, 0], [1, 1], ceil_mode, arg_hi
        )
        unsure = torch.where(certain, 0.0, g.clamp(max=0) if clamp_max else g.clamp(min=0))
        return sure + _upsample(unsure, geo).masked_fill_(~possible, 0)

    return route(g_lo, True), route(g_hi, False)


@implements(aten.max_pool2d_with_indices_backward.default)
def max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    lo, hi = lohi(self)
    g_lo, g_hi = lohi(grad_output)
    geo = _Geometry(lo.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if _non_overlapping(geo) and lo.is_floating_point():
        return make(*_backward_non_overlapping(lo, hi, g_lo, g_hi, geo, kernel_size, stride, ceil_mode), exact=True)
    w_lo, w_hi = geo.windows(lo, -math.inf), geo.windows(hi, -math.inf)
    c_lo, c_hi = max_grad_contributions(w_lo, w_hi, g_lo, g_hi)
    hw = geo.hw[0] * geo.hw[1]
    idx = geo.index_windows(lo.device).reshape(-1)
    idx = torch.where(idx < 0, hw, idx)
    lead = lo.shape[:-2]
    flat = math.prod(lead)

    def scatter(c: torch.Tensor) -> torch.Tensor:
        out = c.new_zeros(flat, hw + 1)
        out.scatter_add_(1, idx.expand(flat, -1), c.reshape(flat, -1))
        return out[:, :hw].reshape(*lead, *geo.hw)

    r_lo, r_hi = scatter(c_lo), scatter(c_hi)
    if rounding.rounding_enabled():
        n = math.prod(-(-(geo.d[i] * (geo.k[i] - 1) + 1) // geo.s[i]) for i in range(2)) + 1
        mag = scatter(torch.maximum(c_lo.abs(), c_hi.abs()))
        r_lo, r_hi = rounding.widen_abs(r_lo, r_hi, rounding.dot_error(n, mag))
        return make(r_lo, r_hi, rounded=True)
    return make(r_lo, r_hi)


def _kernel_terms(kernel_size) -> int:
    k = _pair(kernel_size)
    return k[0] * k[1] + 1


accumulating(aten.avg_pool2d.default, lambda self, kernel_size, *a, **k: _kernel_terms(kernel_size))
accumulating(aten.avg_pool2d_backward.default, lambda grad, self, kernel_size, *a, **k: _kernel_terms(kernel_size))
accumulating(aten._adaptive_avg_pool2d.default, lambda self, output_size: math.prod(self.shape[-2:]) + 1)
accumulating(aten._adaptive_avg_pool2d_backward.default, lambda grad, self: math.prod(self.shape[-2:]) + 1)
