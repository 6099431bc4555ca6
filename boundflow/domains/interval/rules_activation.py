"""Activations and the backward ops autograd emits for them.

Forward activations are monotone (relu, leaky_relu with slope >= 0, hardtanh, sigmoid, tanh,
softplus, elu).  Backward rules use the *tight* range of the local derivative over the operand
interval (e.g. ``s (1 - s)`` for sigmoid peaks at ``s = 1/2``) times the incoming gradient.
"""

from __future__ import annotations

import torch

from boundflow import rounding
from boundflow.domains.interval import arith
from boundflow.domains.interval.generic import monotone_rule
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import lohi, make

aten = torch.ops.aten
ULPS = rounding.TRANSCENDENTAL_ULPS

monotone_rule(aten.relu.default, aten.hardtanh.default, exact=True)  # max/min with constants: exact
monotone_rule(aten.sigmoid.default, aten.tanh.default, ulps=ULPS)


@implements(aten.elu.default)
def elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    """``scale * x`` for ``x > 0``, ``scale * alpha * (exp(input_scale * x) - 1)`` below, for
    arguments of any sign: each piece is monotone and both meet at ``(0, 0)``, so the range over
    ``[l, u]`` is the hull of ``f(l)``, ``f(u)`` and, where the interval holds 0, ``0``."""
    lo, hi = lohi(x)
    a, sc, isc = float(alpha), float(scale), float(input_scale)
    f_lo = torch.ops.aten.elu.default(lo, a, sc, isc)
    if lo is hi:
        r_lo = r_hi = f_lo
    else:
        f_hi = torch.ops.aten.elu.default(hi, a, sc, isc)
        r_lo, r_hi = torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)
        if not (a >= 0 and sc >= 0 and isc >= 0):  # not monotone: the kink at 0 can be an extremum
            zero = (lo <= 0) & (hi >= 0)
            r_lo = torch.where(zero, r_lo.clamp(max=0), r_lo)
            r_hi = torch.where(zero, r_hi.clamp(min=0), r_hi)
    if rounding.rounding_enabled():
        return make(*rounding.widen_rel(r_lo, r_hi, ULPS), rounded=True, nan_free=True)
    return make(r_lo, r_hi, nan_free=True)


def _trig(f):
    def rule(x):
        lo, hi = f(lohi(x))
        if rounding.rounding_enabled():
            lo, hi = rounding.widen_rel(lo, hi, ULPS)
            return make(lo.clamp(min=-1), hi.clamp(max=1), rounded=True, nan_free=True)
        return make(lo, hi, nan_free=True)

    return rule


# periodic: the endpoint values, or +-1 where an extremum lies inside (``arith.sin``/``cos``)
implements(aten.sin.default)(_trig(arith.sin))
implements(aten.cos.default)(_trig(arith.cos))


@implements(aten.leaky_relu.default)
def leaky_relu(x, negative_slope=0.01):
    lo, hi = lohi(x)
    s = float(negative_slope)
    f = torch.nn.functional.leaky_relu
    if s >= 0:
        return make(f(lo, s), f(hi, s))
    # negative slope: not monotone; minimum at 0 when the interval straddles 0
    a, b = f(lo, s), f(hi, s)
    r_lo = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(a, b))
    return make(r_lo, torch.maximum(a, b))


@implements(aten.softplus.default)
def softplus(x, beta=1, threshold=20):
    """torch's softplus switches to the identity above ``beta x > threshold``; that switch is a
    small downward jump (``log(1 + e^t) / beta > t / beta``), so the function is monotone only
    piecewise: where an interval crosses the switch, both one-sided values at it are included."""
    b, t = float(beta), float(threshold)
    if b <= 0:
        from boundflow.errors import DomainError

        raise DomainError(f"softplus interval rule needs beta > 0, got {b}")
    lo, hi = lohi(x)
    f = torch.nn.functional.softplus
    r_lo, r_hi = f(lo, b, t), f(hi, b, t)
    x_t = t / b
    cross = (lo * b <= t) & (hi * b > t)
    smooth_at_t = torch.log1p(torch.exp(torch.tensor(t, dtype=torch.float64, device="cpu"))).item() / b
    r_lo = torch.where(cross, torch.clamp(r_lo, max=x_t), r_lo)
    r_hi = torch.where(cross, torch.clamp(r_hi, min=smooth_at_t), r_hi)
    if rounding.rounding_enabled():
        return make(*rounding.widen_rel(r_lo, r_hi, ULPS), rounded=True)
    return make(r_lo, r_hi)


def _gated(grad, take: torch.Tensor, drop: torch.Tensor):
    """grad where ``take``; 0 where ``drop``; hull(grad, 0) elsewhere (undecided)."""
    g_lo, g_hi = lohi(grad)
    lo = torch.where(take, g_lo, g_lo.clamp(max=0)).masked_fill_(drop, 0)
    hi = torch.where(take, g_hi, g_hi.clamp(min=0)).masked_fill_(drop, 0)
    return make(lo, hi, exact=True)


@implements(aten.threshold_backward.default)
def threshold_backward(grad_output, self, threshold):
    """``grad if self > threshold else 0`` (ReLU's backward; ``self`` may be input or output).

    With ``thr`` the op itself on plain tensors:
    ``lower = thr(max(g_lo, 0), s_lo) + thr(min(g_lo, 0), s_hi)`` and
    ``upper = thr(min(g_hi, 0), s_lo) + thr(max(g_hi, 0), s_hi)``: where ``s_lo > t`` the gate
    is open for every operand (``g``), where only ``s_hi > t`` it may be (hull of ``g`` and 0),
    elsewhere it is closed (0).  One of each pair of terms is 0, so no ``inf - inf``."""
    s_lo, s_hi = lohi(self)
    g_lo, g_hi = lohi(grad_output)
    thr = aten.threshold_backward.default
    lo = thr(g_lo.clamp(min=0), s_lo, threshold).add_(thr(g_lo.clamp(max=0), s_hi, threshold))
    hi = thr(g_hi.clamp(max=0), s_lo, threshold).add_(thr(g_hi.clamp(min=0), s_hi, threshold))
    return make(lo, hi, exact=True)


@implements(aten.hardtanh_backward.default)
def hardtanh_backward(grad_output, self, min_val, max_val):
    lo, hi = lohi(self)
    a, b = float(min_val), float(max_val)
    return _gated(grad_output, (lo > a) & (hi < b), (hi <= a) | (lo >= b))


@implements(aten.leaky_relu_backward.default)
def leaky_relu_backward(grad_output, self, negative_slope, self_is_result):
    """``grad * (1 if self > 0 else slope)``: the factor is exact where the sign of ``self`` is
    decided, and ranges over ``{slope, 1}`` where it is not."""
    lo, hi = lohi(self)
    s = float(negative_slope)
    one = torch.ones_like(lo)
    pos, neg = lo > 0, hi <= 0
    f_lo = torch.where(pos, one, torch.where(neg, one * s, one * min(s, 1.0)))
    f_hi = torch.where(pos, one, torch.where(neg, one * s, one * max(s, 1.0)))
    return make(*arith.mul(lohi(grad_output), (f_lo, f_hi)))


def _s_one_minus_s(lo: torch.Tensor, hi: torch.Tensor) -> arith.Bounds:
    """Range of ``s (1 - s)`` for ``s`` in ``[lo, hi]``: concave, peak 1/4 at s = 1/2."""
    f_lo, f_hi = lo * (1 - lo), hi * (1 - hi)
    r_lo = torch.minimum(f_lo, f_hi)
    r_hi = torch.where((lo <= 0.5) & (hi >= 0.5), torch.full_like(lo, 0.25), torch.maximum(f_lo, f_hi))
    return r_lo, r_hi


@implements(aten.sigmoid_backward.default)
def sigmoid_backward(grad_output, output):
    lo, hi = lohi(output)
    return make(*arith.mul(lohi(grad_output), _s_one_minus_s(lo, hi)))


@implements(aten.tanh_backward.default)
def tanh_backward(grad_output, output):
    """``grad * (1 - t^2)`` with the tight range of ``1 - t^2``."""
    sq_lo, sq_hi = arith.square(lohi(output))
    if sq_lo is sq_hi:
        sq_hi = sq_lo
    return make(*arith.mul(lohi(grad_output), (1 - sq_hi, 1 - sq_lo)))


def _softplus_slope(x: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    bx = x * beta
    return torch.where(bx > threshold, torch.ones_like(x), torch.sigmoid(bx))


@implements(aten.softplus_backward.default)
def softplus_backward(grad_output, self, beta, threshold):
    """``grad * sigmoid(beta x)`` (1 above the threshold): the slope is non-decreasing in x."""
    lo, hi = lohi(self)
    b, t = float(beta), float(threshold)
    s_lo, s_hi = _softplus_slope(lo, b, t), _softplus_slope(hi, b, t)
    if b < 0:
        s_lo, s_hi = torch.minimum(s_lo, s_hi), torch.maximum(s_lo, s_hi)
    if rounding.rounding_enabled():
        s_lo, s_hi = rounding.widen_rel(s_lo, s_hi, ULPS)
    return make(*arith.mul(lohi(grad_output), (s_lo, s_hi)))


@implements(aten.elu_backward.default)
def elu_backward(grad_output, alpha, scale, input_scale, is_result, self_or_result):
    """ELU's derivative: ``scale`` for x > 0, ``alpha*scale*input_scale*exp(input_scale x)``
    below (from the output when ``is_result``); each piece is monotone."""
    a, sc, isc = float(alpha), float(scale), float(input_scale)
    lo, hi = lohi(self_or_result)

    def deriv(v: torch.Tensor) -> torch.Tensor:
        if is_result:
            neg = isc * (v + a * sc)
        else:
            neg = a * sc * isc * torch.exp(v * isc)
        return torch.where(v > 0, torch.full_like(v, sc), neg)

    # each piece is monotone; the derivative may jump at 0 (alpha > 1), so the hull also
    # takes both one-sided limits at 0 where the interval straddles 0
    d_lo, d_hi = deriv(lo), deriv(hi)
    d_lo, d_hi = torch.minimum(d_lo, d_hi), torch.maximum(d_lo, d_hi)
    straddle = (lo <= 0) & (hi > 0)
    left, right = a * sc * isc, sc
    d_lo = torch.where(straddle, d_lo.clamp(max=min(left, right)), d_lo)
    d_hi = torch.where(straddle, d_hi.clamp(min=max(left, right)), d_hi)
    if rounding.rounding_enabled():
        d_lo, d_hi = rounding.widen_rel(d_lo, d_hi, ULPS)
    return make(*arith.mul(lohi(grad_output), (d_lo, d_hi)))
