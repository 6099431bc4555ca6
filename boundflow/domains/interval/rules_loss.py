"""Loss functions as emitted by ``F.cross_entropy`` / ``nll_loss``, ``mse_loss`` and
``binary_cross_entropy_with_logits`` (tight closed forms per element, then the reduction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from boundflow import rounding
from boundflow.domains.interval import arith
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import exact_value, lohi, make
from boundflow.errors import DomainError

aten = torch.ops.aten

_NONE, _MEAN, _SUM = 0, 1, 2


def _reduce(b: arith.Bounds, reduction: int) -> arith.Bounds:
    if reduction == _NONE:
        return b
    dims = list(range(b[0].dim()))
    s = arith.reduce_sum(b, dims)
    if reduction == _MEAN:
        n = max(1, b[0].numel())
        s = (s[0] / n, s[1] / n)
    return s


def _class_weight(weight):
    if weight is None:
        return None
    w = exact_value(weight, "the class weight of nll_loss")
    if (w < 0).any():
        raise DomainError("nll_loss interval rule needs non-negative class weights")
    return w


@implements(aten.nll_loss_forward.default)
def nll_loss_forward(self, target, weight, reduction, ignore_index):
    """``-sum_i w[t_i] x[i, t_i] / norm``: non-increasing in ``x`` (weights >= 0)."""
    lo, hi = lohi(self)
    t = exact_value(target, "the target of nll_loss")
    w = _class_weight(weight)
    out_lo, total = aten.nll_loss_forward.default(hi, t, w, reduction, ignore_index)
    out_hi, _ = aten.nll_loss_forward.default(lo, t, w, reduction, ignore_index)
    if rounding.rounding_enabled():
        mag, _ = aten.nll_loss_forward.default(-torch.maximum(lo.abs(), hi.abs()), t, w, reduction, ignore_index)
        n = lo.shape[0] + 2 if lo.dim() > 1 else 3
        out_lo, out_hi = rounding.widen_abs(out_lo, out_hi, rounding.dot_error(n, mag.abs()))
        return make(out_lo, out_hi, rounded=True), make(total, total.clone(), exact=True)
    return make(out_lo, out_hi), make(total, total.clone(), exact=True)


@implements(aten.nll_loss_backward.default)
def nll_loss_backward(grad_output, self, target, weight, reduction, ignore_index, total_weight):
    """Linear in ``grad_output`` with coefficients ``-w[t]/norm <= 0``."""
    g_lo, g_hi = lohi(grad_output)
    x = lohi(self)[0]
    t = exact_value(target, "the target of nll_loss")
    w = _class_weight(weight)
    tw = exact_value(total_weight, "total_weight")
    lo = aten.nll_loss_backward.default(g_hi, x, t, w, reduction, ignore_index, tw)
    hi = aten.nll_loss_backward.default(g_lo, x, t, w, reduction, ignore_index, tw)
    return make(lo, hi)


@implements(aten.mse_loss.default)
def mse_loss(self, target, reduction=_MEAN):
    d = arith.sub(lohi(self), lohi(target))
    return make(*_reduce(arith.square(d), reduction))


@implements(aten.mse_loss_backward.default)
def mse_loss_backward(grad_output, self, target, reduction):
    d = arith.sub(lohi(self), lohi(target))
    n = max(1, lohi(self)[0].numel()) if reduction == _MEAN else 1
    return make(*arith.mul(arith.scale(d, 2.0 / n), lohi(grad_output)))


def _bce_range(lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor, pw) -> arith.Bounds:
    """Range of ``f(x) = (1 - y) x + c softplus(-x)``, ``c = 1 + (pw - 1) y``, over
    ``x in [lo, hi]`` for exact ``y``: ``f`` is convex, so the max is at an endpoint and the min
    at the stationary point clamped to the interval."""
    c = 1 + (pw - 1) * y if pw is not None else torch.ones_like(y)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (1 - y) * x + c * F.softplus(-x)

    s = (1 - y) / c
    inside = (s > 0) & (s < 1)
    s_safe = torch.where(inside, s, torch.full_like(s, 0.5))
    x_star = torch.where(
        inside,
        torch.log1p(-s_safe) - torch.log(s_safe),
        torch.where(s <= 0, torch.full_like(s, float("inf")), torch.full_like(s, -float("inf"))),
    )
    x_min = torch.minimum(torch.maximum(x_star, lo), hi)
    f_lo, f_hi, f_min = f(lo), f(hi), f(x_min)
    r_lo = torch.minimum(f_min, torch.minimum(f_lo, f_hi))
    r_hi = torch.maximum(f_lo, f_hi)
    return r_lo, r_hi


@implements(aten.binary_cross_entropy_with_logits.default)
def binary_cross_entropy_with_logits(self, target, weight=None, pos_weight=None, reduction=_MEAN):
    """Tight per element: convex in the logit for a fixed target, linear in the target."""
    lo, hi = lohi(self)
    y_lo, y_hi = lohi(target)
    y_lo = torch.as_tensor(y_lo, dtype=lo.dtype).expand_as(lo)
    y_hi = torch.as_tensor(y_hi, dtype=lo.dtype).expand_as(lo)
    pw = exact_value(pos_weight, "pos_weight") if pos_weight is not None else None
    a = _bce_range(lo, hi, y_lo, pw)
    b = a if y_lo is y_hi else _bce_range(lo, hi, y_hi, pw)
    r = arith.hull(a, b)
    if rounding.rounding_enabled():
        scale = torch.maximum(lo.abs(), hi.abs()) + r[1].abs() + 1
        r = rounding.widen_abs(r[0], r[1], scale * (torch.finfo(lo.dtype).eps * rounding.TRANSCENDENTAL_ULPS))
    if weight is not None:
        r = arith.mul(r, lohi(weight))
    return make(*_reduce(r, reduction))
