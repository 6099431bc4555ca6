"""Interval arithmetic on ``(lower, upper)`` pairs of plain tensors.

Every function returns bounds that contain the exact real result for every choice of operands
in the operand intervals.  Exact operands are passed as ``(t, t)`` with the *same* object twice;
functions use that to skip work.  Rounding: functions that accumulate (``bilinear``, ``sum``)
add their own a-priori error bound when :func:`boundflow.sound_rounding` is on and say so via
their ``rounded`` return flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from boundflow import rounding

Bounds = tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "Bounds",
    "exact",
    "hull",
    "add",
    "sub",
    "neg",
    "mul",
    "scale",
    "recip",
    "div",
    "square",
    "abs_",
    "pow_int",
    "monotone",
    "bilinear",
    "mid_rad",
    "with_zero",
]


def exact(a: Bounds) -> bool:
    return a[0] is a[1]


def _rounded(lo, hi) -> Bounds:
    """Under :func:`boundflow.sound_rounding`, one ulp outward: the result of one correctly
    rounded IEEE operation per bound then contains the exact real result.  Every step of a
    compound rule built from these functions (``add`` with ``alpha``, ``addcmul``, batch norm)
    is rounded on its own, so the whole chain is covered, not only its last operation."""
    if rounding.rounding_enabled() and isinstance(lo, torch.Tensor):
        return rounding.widen_ulp(lo, hi)
    return lo, hi


def hull(a: Bounds, b: Bounds) -> Bounds:
    return torch.minimum(a[0], b[0]), torch.maximum(a[1], b[1])


def with_zero(a: Bounds) -> Bounds:
    """Hull of ``a`` and 0."""
    return a[0].clamp(max=0), a[1].clamp(min=0)


def add(a: Bounds, b: Bounds, alpha: float = 1) -> Bounds:
    if alpha != 1:
        b = scale(b, alpha)
    if exact(a) and exact(b):
        r = a[0] + b[0]
        return _rounded(r, r)
    return _rounded(a[0] + b[0], a[1] + b[1])


def neg(a: Bounds) -> Bounds:
    if exact(a):
        r = -a[0]
        return r, r
    return -a[1], -a[0]


def sub(a: Bounds, b: Bounds, alpha: float = 1) -> Bounds:
    return add(a, neg(b), alpha)


def scale(a: Bounds, s) -> Bounds:
    """``a * s`` for an exact scalar or tensor ``s``.  Under ``sound_rounding`` a Python-float
    factor gets two ulps: torch may first round it to the tensor's dtype, then the product."""
    if isinstance(s, float) and rounding.rounding_enabled():
        lo, hi = _rounded(*_scale_plain(a, s))
        return _rounded(lo, hi)
    if exact(a):
        r = a[0] * s
        return _rounded(r, r)
    if isinstance(s, (int, float, bool)):
        return _rounded(*((a[0] * s, a[1] * s) if s >= 0 else (a[1] * s, a[0] * s)))
    p, q = _nan_to_zero(a[0] * s), _nan_to_zero(a[1] * s)
    return _rounded(torch.minimum(p, q), torch.maximum(p, q))


def _scale_plain(a: Bounds, s: float) -> Bounds:
    if exact(a):
        r = a[0] * s
        return r, r
    return (a[0] * s, a[1] * s) if s >= 0 else (a[1] * s, a[0] * s)


def _nan_to_zero(t: torch.Tensor) -> torch.Tensor:
    # 0 * inf: under set semantics an exact 0 factor gives 0
    return torch.nan_to_num(t, nan=0.0, posinf=float("inf"), neginf=float("-inf")) if t.is_floating_point() else t


def mul(a: Bounds, b: Bounds) -> Bounds:
    """Elementwise product: exact interval product (min/max of the four endpoint products)."""
    if exact(b):
        return scale(a, b[0])
    if exact(a):
        return scale(b, a[0])
    p1, p2, p3, p4 = (_nan_to_zero(x * y) for x in a for y in b)
    lo = torch.minimum(torch.minimum(p1, p2), torch.minimum(p3, p4))
    hi = torch.maximum(torch.maximum(p1, p2), torch.maximum(p3, p4))
    return _rounded(lo, hi)


def recip(b: Bounds) -> Bounds:
    """``1 / b``; ``[-inf, inf]`` where ``b`` contains 0."""
    if exact(b):
        r = 1 / b[0]
        return _rounded(r, r)
    lo, hi = b
    has_zero = (lo <= 0) & (hi >= 0)
    inf = torch.full_like(lo, float("inf"))
    r_lo = torch.where(has_zero, -inf, 1 / hi)
    r_hi = torch.where(has_zero, inf, 1 / lo)
    return _rounded(r_lo, r_hi)


def div(a: Bounds, b: Bounds) -> Bounds:
    if exact(b):
        if exact(a):
            r = a[0] / b[0]
            return _rounded(r, r)
        d = b[0]
        if isinstance(d, (int, float)):
            if d == 0:  # x / 0 is -inf, +inf or NaN (0 / 0): only the whole line contains them
                t = torch.as_tensor(a[0])
                inf = torch.full_like(t, float("inf"), dtype=t.dtype if t.is_floating_point() else None)
                return -inf, inf
            return _rounded(*((a[0] / d, a[1] / d) if d > 0 else (a[1] / d, a[0] / d)))
        p, q = a[0] / d, a[1] / d
        return _rounded(torch.minimum(p, q), torch.maximum(p, q))
    return mul(a, recip(b))


def abs_(a: Bounds) -> Bounds:
    if exact(a):
        r = a[0].abs()
        return r, r
    lo, hi = a
    return torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo))), torch.maximum(lo.abs(), hi.abs())


def square(a: Bounds) -> Bounds:
    if exact(a):
        r = a[0] * a[0]
        return _rounded(r, r)
    m_lo, m_hi = abs_(a)
    return _rounded(m_lo * m_lo, m_hi * m_hi)


def pow_int(a: Bounds, p: int) -> Bounds:
    """``a ** p`` for an integer ``p >= 0`` (even powers via ``|a|``; odd powers are increasing)."""
    if exact(a):
        r = a[0] ** p
        return r, r
    if p == 0:
        one = torch.ones_like(a[0])
        return one, one
    if p % 2 == 0:
        m_lo, m_hi = abs_(a)
        return m_lo**p, m_hi**p
    return a[0] ** p, a[1] ** p


def monotone(f: Callable[..., torch.Tensor], *operands: Bounds, decreasing: bool = False) -> Bounds:
    """Apply ``f`` that is non-decreasing (or non-increasing) in every operand."""
    lo = f(*(o[0] for o in operands))
    if all(exact(o) for o in operands):
        return lo, lo
    hi = f(*(o[1] for o in operands))
    return (hi, lo) if decreasing else (lo, hi)


def mid_rad(a: Bounds) -> Bounds:
    """Midpoint and radius with ``[mid - rad, mid + rad] ⊇ a`` even under rounding."""
    lo, hi = a
    mid = torch.add(lo, hi).mul_(0.5)
    if rounding.rounding_enabled():
        rad = torch.maximum(hi - mid, mid - lo)
        rad = torch.nextafter(rad, torch.full_like(rad, float("inf")))
    else:
        rad = torch.sub(hi, lo).mul_(0.5)
    return mid, rad


def bilinear(
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: Bounds, b: Bounds, n_terms: int
) -> tuple[Bounds, bool]:
    """Bound ``f(A, B)`` for a bilinear ``f`` whose entries are sums of ``n_terms`` products
    (matrix products, convolutions), in midpoint-radius form (Rump 1999):

        f(A, B) ⊆ f(mA, mB) ± ( f(|mA| + rA, rB) + f(rA, |mB|) ).

    With one exact operand this is exact (``f(mA, B) ± f(rA, |B|)``); with two intervals it
    overestimates the exact hull by at most a factor 1.5 in the radius.  Returns
    ``(bounds, rounded)``.
    """
    ea, eb = exact(a), exact(b)
    sound = rounding.rounding_enabled()
    if ea and eb:
        c = f(a[0], b[0])
        if sound:
            err = rounding.dot_error(n_terms, f(a[0].abs(), b[0].abs()))
            return rounding.widen_abs(c, c, err), True
        return (c, c), False
    if ea:
        mb, rb = mid_rad(b)
        c = f(a[0], mb)
        aa = a[0].abs()
        r = f(aa, rb)
        mag = (aa, mb.abs_().add_(rb)) if sound else None
    elif eb:
        ma, ra = mid_rad(a)
        c = f(ma, b[0])
        bb = b[0].abs()
        r = f(ra, bb)
        mag = (ma.abs_().add_(ra), bb) if sound else None
    else:
        ma, ra = mid_rad(a)
        mb, rb = mid_rad(b)
        c = f(ma, mb)
        mag_a = ma.abs_().add_(ra)
        mag_b = mb.abs_()
        r = f(mag_a, rb).add_(f(ra, mag_b))
        mag = (mag_a, mag_b.add_(rb)) if sound else None
    lo, hi = torch.sub(c, r), c.add_(r)
    if sound:
        # centre and radius each carry at most dot_error of the magnitude product
        err = rounding.dot_error(n_terms + 1, f(*mag)).mul_(2)
        return rounding.widen_abs(lo, hi, err), True
    return (lo, hi), False


def reduce_sum(a: Bounds, dims: list[int], keepdim: bool = False) -> Bounds:
    """Sum over ``dims`` (monotone).  Under ``sound_rounding`` the result carries the a-priori
    summation error bound."""
    if not dims:
        return a
    lo = a[0].sum(dims, keepdim=keepdim)
    hi = lo if exact(a) else a[1].sum(dims, keepdim=keepdim)
    if rounding.rounding_enabled():
        n = 1
        for d in dims:
            n *= a[0].shape[d]
        mag = torch.maximum(a[0].abs(), a[1].abs()).sum(dims, keepdim=keepdim)
        return rounding.widen_abs(lo, hi, rounding.dot_error(n, mag))
    return lo, hi


def _periodic(a: Bounds, f, peak: float, trough: float) -> Bounds:
    """Range of a 2*pi-periodic ``f`` (sin or cos) with maxima at ``peak + 2 pi k`` and minima
    at ``trough + 2 pi k``: the endpoint values, widened to 1 / -1 where an extremum lies in the
    interval (tested with a margin, which can only widen the result)."""
    lo, hi = a
    two_pi = 2 * math.pi
    flo, fhi = f(lo), f(hi)
    out_lo, out_hi = torch.minimum(flo, fhi), torch.maximum(flo, fhi)
    margin = 1e-9 * (1 + torch.maximum(lo.abs(), hi.abs()))
    wide = (hi - lo) >= two_pi - 1e-9
    for ext, value in ((peak, 1.0), (trough, -1.0)):
        k = torch.ceil((lo - margin - ext) / two_pi)
        inside = (ext + two_pi * k) <= hi + margin
        hit = inside | wide | ~torch.isfinite(lo) | ~torch.isfinite(hi)
        if value > 0:
            out_hi = torch.where(hit, torch.ones_like(out_hi), out_hi)
        else:
            out_lo = torch.where(hit, -torch.ones_like(out_lo), out_lo)
    return out_lo.clamp(-1, 1), out_hi.clamp(-1, 1)


def sin(a: Bounds) -> Bounds:
    return _periodic(a, torch.sin, math.pi / 2, -math.pi / 2)


def cos(a: Bounds) -> Bounds:
    return _periodic(a, torch.cos, 0.0, math.pi)
