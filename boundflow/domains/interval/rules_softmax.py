"""Softmax and log-softmax with the tight per-coordinate bounds (FullCert):

    log_softmax(x)_i >= l_i - log(exp(l_i) + sum_{j != i} exp(u_j))
    log_softmax(x)_i <= u_i - log(exp(u_i) + sum_{j != i} exp(l_j))

evaluated in the log domain with exclusive prefix/suffix log-sum-exps (no cancellation).  Their
backward ops are composed from the interval product/sum rules.
"""

from __future__ import annotations

import math

import torch

from boundflow import rounding
from boundflow.domains.interval import arith
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import lohi, make

aten = torch.ops.aten


def _exclusive_lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log sum_{j != i} exp(x_j)`` along ``dim`` for every ``i``."""
    x = x.movedim(dim, -1)
    pre = torch.logcumsumexp(x, -1)
    suf = torch.logcumsumexp(x.flip(-1), -1).flip(-1)
    ninf = torch.full_like(x[..., :1], -math.inf)
    pre_ex = torch.cat([ninf, pre[..., :-1]], -1)
    suf_ex = torch.cat([suf[..., 1:], ninf], -1)
    return torch.logaddexp(pre_ex, suf_ex).movedim(-1, dim)


def log_softmax_bounds(lo: torch.Tensor, hi: torch.Tensor, dim: int) -> arith.Bounds:
    """Tight bounds on ``log_softmax`` over the box ``[lo, hi]``."""
    dim = dim % lo.dim() if lo.dim() else 0
    r_lo = lo - torch.logaddexp(lo, _exclusive_lse(hi, dim))
    r_hi = hi - torch.logaddexp(hi, _exclusive_lse(lo, dim))
    r_hi = r_hi.clamp(max=0)
    if rounding.rounding_enabled():
        n = lo.shape[dim] if lo.dim() else 1
        scale = torch.maximum(lo.abs(), hi.abs()).amax(dim, keepdim=True) + math.log(n) + 1
        err = scale * (torch.finfo(lo.dtype).eps * (rounding.TRANSCENDENTAL_ULPS + 2 * n))
        r_lo, r_hi = rounding.widen_abs(r_lo, r_hi, err)
        r_hi = r_hi.clamp(max=0)
    return r_lo, r_hi


def _dim(x, dim: int) -> int:
    return dim % x.dim() if x.dim() else 0


@implements(aten._log_softmax.default)
def log_softmax(self, dim, half_to_float):
    lo, hi = lohi(self)
    return make(*log_softmax_bounds(lo, hi, _dim(lo, dim)), rounded=True)


@implements(aten._softmax.default)
def softmax(self, dim, half_to_float):
    lo, hi = lohi(self)
    l_lo, l_hi = log_softmax_bounds(lo, hi, _dim(lo, dim))
    s_lo, s_hi = torch.exp(l_lo), torch.exp(l_hi)
    if rounding.rounding_enabled():
        s_lo, s_hi = rounding.widen_rel(s_lo, s_hi, rounding.TRANSCENDENTAL_ULPS)
    return make(s_lo.clamp(0, 1), s_hi.clamp(0, 1), rounded=True)


@implements(aten._softmax_backward_data.default)
def softmax_backward(grad_output, output, dim, input_dtype):
    """``out * (g - sum_j g_j out_j)``."""
    g, out = lohi(grad_output), lohi(output)
    d = _dim(g[0], dim)
    s = arith.reduce_sum(arith.mul(g, out), [d], keepdim=True)
    return make(*arith.mul(out, arith.sub(g, s)))


@implements(aten._log_softmax_backward_data.default)
def log_softmax_backward(grad_output, output, dim, input_dtype):
    """``g - exp(out) * sum_j g_j``."""
    g, out = lohi(grad_output), lohi(output)
    d = _dim(g[0], dim)
    p = arith.monotone(torch.exp, out)
    if rounding.rounding_enabled():
        p = rounding.widen_rel(p[0], p[1], rounding.TRANSCENDENTAL_ULPS)
    s = arith.reduce_sum(g, [d], keepdim=True)
    return make(*arith.sub(g, arith.mul(p, s)))
