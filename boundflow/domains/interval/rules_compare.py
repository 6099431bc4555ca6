"""Comparisons, boolean logic and selection.

A comparison of intervals is a *boolean interval*: ``lower`` is True where the comparison holds
for every choice of operands, ``upper`` is True where it holds for some.  ``where`` and
``masked_fill`` accept such undecided conditions and return the hull of both branches there, so
autograd formulas built from masks (``maximum``, ``clamp`` ...) stay sound.
"""

from __future__ import annotations

import torch

from boundflow.domains.interval import arith
from boundflow.domains.interval.generic import available
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import exact_value, lohi, make

aten = torch.ops.aten


def _bool(x) -> arith.Bounds:
    """The truth value of each entry as a boolean interval ``(certainly True, possibly True)``.
    A bool interval is already one; a numeric interval is certainly True where it excludes 0
    and possibly True unless it is exactly ``[0, 0]`` (its bounds' own truth values are not
    enough: ``[-1, 1]`` contains 0)."""
    lo, hi = lohi(x)
    if not isinstance(lo, torch.Tensor):
        lo = hi = torch.as_tensor(bool(lo))
    if lo.dtype == torch.bool:
        return lo, hi
    if lo is hi:
        t = lo != 0
        return t, t
    return (lo > 0) | (hi < 0), (lo != 0) | (hi != 0)


def _cmp_gt(a, b, strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
    a_lo, a_hi = lohi(a)
    b_lo, b_hi = lohi(b)
    if strict:
        return torch.as_tensor(a_lo > b_hi), torch.as_tensor(a_hi > b_lo)
    return torch.as_tensor(a_lo >= b_hi), torch.as_tensor(a_hi >= b_lo)


@implements(aten.gt.Tensor, aten.gt.Scalar)
def gt(a, b):
    return make(*_cmp_gt(a, b, True), exact=True)


@implements(aten.ge.Tensor, aten.ge.Scalar)
def ge(a, b):
    return make(*_cmp_gt(a, b, False), exact=True)


@implements(aten.lt.Tensor, aten.lt.Scalar)
def lt(a, b):
    return make(*_cmp_gt(b, a, True), exact=True)


@implements(aten.le.Tensor, aten.le.Scalar)
def le(a, b):
    return make(*_cmp_gt(b, a, False), exact=True)


def _eq(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a_lo, a_hi = lohi(a)
    b_lo, b_hi = lohi(b)
    certain = torch.as_tensor((a_lo == a_hi) & (b_lo == b_hi) & (a_lo == b_lo))
    possible = torch.as_tensor((a_lo <= b_hi) & (b_lo <= a_hi))
    return certain, possible


@implements(aten.eq.Tensor, aten.eq.Scalar)
def eq(a, b):
    return make(*_eq(a, b), exact=True)


@implements(aten.ne.Tensor, aten.ne.Scalar)
def ne(a, b):
    certain, possible = _eq(a, b)
    return make(~possible, ~certain, exact=True)


@implements(aten.logical_not.default, *available("bitwise_not.default"))
def logical_not(a):
    lo, hi = _bool(a)
    return make(~hi, ~lo, exact=True)


def _logical(op):
    def rule(a, b):
        """On the truth values of the operands (boolean intervals), where ``op`` is monotone."""
        (a_lo, a_hi), (b_lo, b_hi) = _bool(a), _bool(b)
        return make(op(a_lo, b_lo), op(a_hi, b_hi), exact=True)

    return rule


implements(aten.logical_and.default)(_logical(torch.logical_and))
implements(aten.logical_or.default)(_logical(torch.logical_or))


@implements(aten.logical_xor.default)
def logical_xor(a, b):
    """Decided only where the truth values of both operands are."""
    (a_lo, a_hi), (b_lo, b_hi) = _bool(a), _bool(b)
    decided = (a_lo == a_hi) & (b_lo == b_hi)
    v = a_lo ^ b_lo
    return make(v & decided, v | ~decided, exact=True)


@implements(aten.isnan.default)
def isnan(a):
    """Bounds are never NaN; a concrete NaN is possible only where a bound is infinite (a
    result such as ``0/0`` that rules widen to the whole line)."""
    lo, hi = lohi(a)
    return make(torch.zeros_like(lo, dtype=torch.bool), ~(torch.isfinite(lo) & torch.isfinite(hi)), exact=True)


@implements(aten.where.self)
def where(condition, self, other):
    c_lo, c_hi = _bool(condition)
    a_lo, a_hi = lohi(self)
    b_lo, b_hi = lohi(other)
    und_lo = torch.minimum(torch.as_tensor(a_lo), torch.as_tensor(b_lo))
    und_hi = torch.maximum(torch.as_tensor(a_hi), torch.as_tensor(b_hi))
    lo = torch.where(c_lo, a_lo, torch.where(~c_hi, b_lo, und_lo))
    hi = torch.where(c_lo, a_hi, torch.where(~c_hi, b_hi, und_hi))
    return make(lo, hi, exact=True)


@implements(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(self, mask, value):
    m_lo, m_hi = _bool(mask)
    s_lo, s_hi = lohi(self)
    v_lo, v_hi = lohi(value)
    if isinstance(v_lo, torch.Tensor):
        v_lo, v_hi = v_lo.to(s_lo.dtype), v_hi.to(s_lo.dtype)
    else:
        v_lo = v_hi = torch.as_tensor(v_lo, dtype=s_lo.dtype)
    lo = torch.where(m_lo, v_lo, torch.where(m_hi, torch.minimum(s_lo, v_lo), s_lo))
    hi = torch.where(m_lo, v_hi, torch.where(m_hi, torch.maximum(s_hi, v_hi), s_hi))
    return make(lo, hi, exact=True)


def _bitwise(kind: str):
    def rule(a, b):
        """Booleans: ``&`` and ``|`` are monotone; ``^`` is decided only where both operands are.
        Integers: operands must be exact."""
        a_lo, a_hi = lohi(a)
        b_lo, b_hi = lohi(b)
        a_bool = not isinstance(a_lo, torch.Tensor) or a_lo.dtype == torch.bool
        b_bool = not isinstance(b_lo, torch.Tensor) or b_lo.dtype == torch.bool
        if not (a_bool and b_bool):
            x, y = exact_value(a, "an integer bitwise operand"), exact_value(b, "an integer bitwise operand")
            r = getattr(torch, f"bitwise_{kind}")(x, y)
            return make(r, r.clone(), exact=True)
        a_lo, a_hi, b_lo, b_hi = (torch.as_tensor(t, dtype=torch.bool) for t in (a_lo, a_hi, b_lo, b_hi))
        if kind == "and":
            return make(a_lo & b_lo, a_hi & b_hi, exact=True)
        if kind == "or":
            return make(a_lo | b_lo, a_hi | b_hi, exact=True)
        decided = (a_lo == a_hi) & (b_lo == b_hi)
        v = a_lo ^ b_lo
        return make(v & decided, v | ~decided, exact=True)

    return rule


implements(aten.bitwise_and.Tensor)(_bitwise("and"))
implements(aten.bitwise_or.Tensor)(_bitwise("or"))
implements(aten.bitwise_xor.Tensor)(_bitwise("xor"))


def _reduction(op):
    def rule(a, *args, **kwargs):
        """On the truth values of the entries: ``any``/``all`` are monotone in them."""
        lo, hi = _bool(a)
        return make(op(lo, *args, **kwargs), op(hi, *args, **kwargs), exact=True)

    return rule


for _op in available("all.default", "all.dim", "all.dims", "any.default", "any.dim", "any.dims"):
    implements(_op)(_reduction(_op))
