"""Pooling.  Average pools are linear with non-negative weights (monotone).  Max pooling is
monotone in its input for the values; its backward routes the gradient to the argmax, which is
exactly known only where one entry's lower bound beats every other entry's upper bound: there
the entry gets the gradient, entries that may be the argmax get the hull of the gradient and 0,
and the rest get 0.  The rule reads the input bounds and ignores the concrete ``indices``."""

from __future__ import annotations

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
        """Flat input index of every window position; -1 for padding."""
        idx = torch.arange(self.hw[0] * self.hw[1], device=device, dtype=torch.float64).reshape(self.hw)
        return self.windows(idx, -1.0).long()


def _argmax_sets(w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window position: (certainly the argmax, possibly the argmax)."""
    max_lo = w_lo.amax(-1, keepdim=True)
    possible = w_hi >= max_lo
    if w_hi.shape[-1] == 1:
        return torch.ones_like(possible), possible
    top2 = w_hi.topk(2, dim=-1).values
    first = w_hi.argmax(-1, keepdim=True)
    pos = torch.arange(w_hi.shape[-1], device=w_hi.device)
    max_other = torch.where(pos == first, top2[..., 1:2], top2[..., 0:1])
    certain = w_lo > max_other
    return certain, possible


def max_grad_contributions(w_lo, w_hi, g_lo, g_hi) -> arith.Bounds:
    """Gradient bounds flowing to each candidate of a max over the last dim of ``w``, given
    gradient bounds ``g`` of the max (shape of ``w`` without its last dim, or broadcastable)."""
    certain, possible = _argmax_sets(w_lo, w_hi)
    g_lo, g_hi = g_lo.unsqueeze(-1), g_hi.unsqueeze(-1)
    zero = torch.zeros((), dtype=g_lo.dtype, device=g_lo.device)
    lo = torch.where(certain, g_lo, torch.where(possible, g_lo.clamp(max=0), zero))
    hi = torch.where(certain, g_hi, torch.where(possible, g_hi.clamp(min=0), zero))
    return lo, hi


@implements(aten.max_pool2d_with_indices.default)
def max_pool2d_with_indices(self, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """Values: max pooling of each bound (exact).  Indices: an integer interval containing the
    flat index of every entry that may be the window's argmax (exact where it is decided)."""
    lo, hi = lohi(self)
    v_lo, _ = aten.max_pool2d_with_indices.default(lo, kernel_size, stride, padding, dilation, ceil_mode)
    v_hi, _ = aten.max_pool2d_with_indices.default(hi, kernel_size, stride, padding, dilation, ceil_mode)
    geo = _Geometry(lo.shape, kernel_size, stride, padding, dilation, ceil_mode)
    w_lo, w_hi = geo.windows(lo, -math.inf), geo.windows(hi, -math.inf)
    _, possible = _argmax_sets(w_lo, w_hi)
    idx = geo.index_windows(lo.device).expand_as(possible)
    big = torch.iinfo(torch.int64).max
    i_lo = torch.where(possible, idx, big).amin(-1)
    i_hi = torch.where(possible, idx, -1).amax(-1)
    return make(v_lo, v_hi, exact=True), make(i_lo, i_hi, exact=True)


@implements(aten.max_pool2d_with_indices_backward.default)
def max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    lo, hi = lohi(self)
    g_lo, g_hi = lohi(grad_output)
    geo = _Geometry(lo.shape, kernel_size, stride, padding, dilation, ceil_mode)
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
accumulating(
    aten.avg_pool2d_backward.default, lambda grad, self, kernel_size, *a, **k: _kernel_terms(kernel_size)
)
accumulating(aten._adaptive_avg_pool2d.default, lambda self, output_size: math.prod(self.shape[-2:]) + 1)
accumulating(aten._adaptive_avg_pool2d_backward.default, lambda grad, self: math.prod(self.shape[-2:]) + 1)
