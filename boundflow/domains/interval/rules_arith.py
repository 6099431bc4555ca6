"""Elementwise arithmetic: add, sub, mul, div, neg, abs, pow, sqrt, exp, log, clamp, min/max,
and the fused ``addcmul``/``addcdiv`` used by optimisers.  Interval ⊗ tensor and
interval ⊗ interval; products are the exact interval products."""

from __future__ import annotations

import torch

from boundflow import rounding
from boundflow.domains.interval import arith
from boundflow.domains.interval.generic import available, monotone_rule
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import lohi, make
from boundflow.errors import DomainError

aten = torch.ops.aten
ULPS = rounding.TRANSCENDENTAL_ULPS


def _b(x) -> arith.Bounds:
    return lohi(x)


def _out(b: arith.Bounds, like=None):
    lo, hi = b
    if not isinstance(lo, torch.Tensor):
        lo = torch.as_tensor(lo)
        hi = torch.as_tensor(hi)
    return make(lo, hi)


@implements(aten.add.Tensor, aten.add.Scalar)
def add(a, b, alpha=1):
    return _out(arith.add(_b(a), _b(b), alpha))


@implements(aten.sub.Tensor, aten.sub.Scalar)
def sub(a, b, alpha=1):
    return _out(arith.sub(_b(a), _b(b), alpha))


@implements(aten.rsub.Tensor, aten.rsub.Scalar)
def rsub(a, b, alpha=1):
    return _out(arith.sub(_b(b), _b(a), alpha))


@implements(aten.mul.Tensor, aten.mul.Scalar)
def mul(a, b):
    lo, hi = arith.mul(_b(a), _b(b))
    if a is b and isinstance(lo, torch.Tensor):  # x * x: a square is never negative
        lo = lo.clamp(min=0)
    return _out((lo, hi))


def _cast(b: arith.Bounds, dtype: torch.dtype) -> arith.Bounds:
    lo, hi = b
    if not isinstance(lo, torch.Tensor) or lo.dtype == dtype:
        return b
    lo2 = lo.to(dtype)
    return (lo2, lo2) if lo is hi else (lo2, hi.to(dtype))


@implements(aten.div.Tensor, aten.div.Scalar)
def div(a, b):
    """True division (integer operands, e.g. counts from masks, are promoted to float)."""
    A, B = _b(a), _b(b)
    dtype = torch.result_type(A[0], B[0])
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return _out(arith.div(_cast(A, dtype), _cast(B, dtype)))


@implements(aten.reciprocal.default)
def reciprocal(a):
    return _out(arith.recip(_b(a)))


@implements(aten.neg.default)
def neg(a):
    lo, hi = _b(a)
    return make(-hi, -lo, exact=True)


@implements(aten.abs.default)
def abs_(a):
    lo, hi = arith.abs_(_b(a))
    return make(lo, hi, exact=True)


# exact in IEEE arithmetic: nothing to round
monotone_rule(
    aten.sgn.default, aten.sign.default, aten.floor.default, aten.ceil.default, aten.trunc.default, exact=True
)
monotone_rule(aten.round.default, exact=True)


@implements(aten.pow.Tensor_Scalar)
def pow_scalar(a, exponent):
    """``a ** p``: integer ``p >= 0`` exactly; other ``p`` need ``a >= 0`` (``a > 0`` for
    ``p < 0``), where the power is monotone."""
    lo, hi = _b(a)
    p = float(exponent)
    if p.is_integer() and p >= 0:
        r = arith.pow_int((lo, hi), int(p))
    else:
        if p.is_integer():
            # negative integer power: 1 / a**|p|
            r = arith.recip(arith.pow_int((lo, hi), int(-p)))
        else:
            bad = lo < 0
            if bad.any():
                raise DomainError(
                    f"pow(x, {p}) needs x >= 0, but the interval's lower bound is negative in {int(bad.sum())} "
                    f"of {lo.numel()} entries (min {lo.min().item():.3g})"
                )
            r = (lo**p, hi**p) if p > 0 else (hi**p, lo**p)
    if rounding.rounding_enabled():
        return make(*rounding.widen_rel(r[0], r[1], ULPS), rounded=True)
    return make(*r)


@implements(aten.pow.Scalar)
def pow_base(base, exponent):
    """``base ** x`` for an exact base > 0: monotone in x."""
    b = float(base)
    if b <= 0:
        raise DomainError(f"pow({b}, x) on an interval exponent needs a positive base")
    lo, hi = _b(exponent)
    r_lo, r_hi = torch.pow(b, lo), torch.pow(b, hi)
    if b < 1:
        r_lo, r_hi = r_hi, r_lo
    if rounding.rounding_enabled():
        return make(*rounding.widen_rel(r_lo, r_hi, ULPS), rounded=True)
    return make(r_lo, r_hi)


def _domain_check(op: str, lo: torch.Tensor, minimum: float, strict: bool = False) -> None:
    bad = lo <= minimum if strict else lo < minimum
    if bad.any():
        rel = ">" if strict else ">="
        raise DomainError(
            f"{op}(x) needs x {rel} {minimum:g}, but the interval's lower bound violates it in {int(bad.sum())} of "
            f"{lo.numel()} entries (min {lo.min().item():.3g}); no interval contains the resulting NaN"
        )


def _monotone_checked(op, name: str, minimum: float | None, decreasing: bool = False, strict: bool = False):
    def rule(a):
        lo, hi = _b(a)
        if minimum is not None:
            _domain_check(name, lo, minimum, strict)
        r_lo, r_hi = op(lo), op(hi)
        if decreasing:
            r_lo, r_hi = r_hi, r_lo
        if rounding.rounding_enabled():
            return make(*rounding.widen_rel(r_lo, r_hi, ULPS), rounded=True)
        return make(r_lo, r_hi)

    return rule


implements(aten.sqrt.default)(_monotone_checked(torch.sqrt, "sqrt", 0.0))
implements(aten.rsqrt.default)(_monotone_checked(torch.rsqrt, "rsqrt", 0.0, decreasing=True, strict=True))
implements(aten.log.default)(_monotone_checked(torch.log, "log", 0.0))
implements(aten.log2.default)(_monotone_checked(torch.log2, "log2", 0.0))
implements(aten.log10.default)(_monotone_checked(torch.log10, "log10", 0.0))
implements(aten.log1p.default)(_monotone_checked(torch.log1p, "log1p", -1.0))
monotone_rule(aten.exp.default, aten.exp2.default, aten.expm1.default, aten.erf.default, ulps=ULPS)
monotone_rule(
    *available(
        "clamp.default",
        "clamp.Tensor",
        "clamp_min.default",
        "clamp_max.default",
        "clamp_min.Tensor",
        "clamp_max.Tensor",
        "maximum.default",
        "minimum.default",
        "fmax.default",
        "fmin.default",
    ),
    exact=True,  # each returns an operand: nothing to round
)


@implements(aten.addcmul.default)
def addcmul(self, tensor1, tensor2, value=1):
    return _out(arith.add(_b(self), arith.scale(arith.mul(_b(tensor1), _b(tensor2)), value)))


@implements(aten.addcdiv.default)
def addcdiv(self, tensor1, tensor2, value=1):
    return _out(arith.add(_b(self), arith.scale(arith.div(_b(tensor1), _b(tensor2)), value)))


@implements(aten.lerp.Scalar)
def lerp(self, end, weight):
    w = float(weight)
    # 1 - w is rounded once; scale's allowance for a Python-float factor covers it
    return _out(arith.add(arith.scale(_b(self), 1 - w), arith.scale(_b(end), w)))
