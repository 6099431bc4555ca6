"""Linear relaxations of the general elementwise nonlinearities (``Sin``, ``Cos``, ``Pow``,
``Sqrt``, ``Erf``, reciprocals, ``Clip``/``Min``/``Max`` with constants, ``Abs``, step functions).

Every relaxation here returns ``(a_l, b_l, a_u, b_u)`` with ``a_l x + b_l <= f(x) <= a_u x +
b_u`` for every ``x`` in ``[l, u]``:

* :func:`curved`: any twice-differentiable ``f`` given a sound interval enclosure of ``f''`` on
  ``[l, u]`` (from the interval domain's rules).  Convex on the interval: chord above, tangent
  at the midpoint below; concave: the reverse; otherwise the chord shifted by the interpolation
  error bound ``f(x) - chord(x) = -f''(xi)/2 (x - l)(u - x)`` with ``(x - l)(u - x) <= h^2``,
  ``h = (u - l)/2``.  Each side is then replaced by the constant interval bound of ``f`` where
  that is tighter on average (wide intervals over several periods of ``sin``, say), and padded
  outward by a few ulps of the magnitudes involved, so float rounding of the lines cannot break
  them.  Non-finite lines fall back to the interval bounds.
* :func:`clamp_lines`: ``min(max(x, a), b)`` for constant (tensor) ``a <= b``.
* :func:`abs_lines`, :func:`interval_lines` (constant lines: step functions such as ``sign``,
  ``floor``, ``round``).
"""

from __future__ import annotations

import math

import torch

from boundflow.domains.interval import IntervalTensor, lohi

__all__ = ["curved", "clamp_lines", "abs_lines", "interval_lines", "interval_of"]

_PAD = 8 * torch.finfo(torch.float64).eps


def interval_of(fn, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval domain's enclosure of ``fn`` (torch ops) over ``[l, u]``."""
    with torch.no_grad():
        return lohi(fn(IntervalTensor(l, u, check=False)))


def _pad(b: torch.Tensor, scale: torch.Tensor, sign: float) -> torch.Tensor:
    """``b`` moved outward (``sign`` -1: down, +1: up) by a few ulps of ``scale``."""
    eps = _PAD if b.dtype == torch.float64 else 8 * torch.finfo(b.dtype).eps
    return b + sign * eps * (1 + scale)


def interval_lines(lo: torch.Tensor, hi: torch.Tensor):
    """Constant lines ``lo <= f(x) <= hi`` (sound whenever ``[lo, hi]`` encloses ``f``)."""
    z = torch.zeros_like(lo)
    return z, lo, z.clone(), hi


def _finite_or(a, b, fallback_a, fallback_b):
    ok = torch.isfinite(a) & torch.isfinite(b)
    return torch.where(ok, a, fallback_a), torch.where(ok, b, fallback_b)


def curved(f, df, ddf_range, l: torch.Tensor, u: torch.Tensor, f_range=None):
    """Sound lines for a twice-differentiable ``f`` on ``[l, u]`` (see the module docstring).

    ``ddf_range(l, u)`` and ``f_range(l, u)`` return sound enclosures ``(lo, hi)`` of ``f''``
    and ``f`` over ``[l, u]`` (``f_range`` defaults to the interval domain's rule of ``f``)."""
    f_lo, f_hi = (f_range or (lambda a, b: interval_of(f, a, b)))(l, u)
    m2, M2 = ddf_range(l, u)
    with torch.no_grad():
        fl, fu = f(l), f(u)
        mid = (l + u) / 2
        h = (u - l) / 2
        narrow = (u - l) <= 1e-12 * (1 + mid.abs())
        width = torch.where(narrow, torch.ones_like(l), u - l)
        chord_a = torch.where(narrow, df(mid), (fu - fl) / width)
        chord_b = fl - chord_a * l
        tan_a = df(mid)
        tan_b = f(mid) - tan_a * mid
        convex, concave = m2 >= 0, M2 <= 0
        err = h * h / 2
        lo_a = torch.where(convex, tan_a, chord_a)
        lo_b = torch.where(convex, tan_b, chord_b - torch.where(concave, 0.0, M2.clamp(min=0) * err))
        up_a = torch.where(concave, tan_a, chord_a)
        up_b = torch.where(concave, tan_b, chord_b + torch.where(convex, 0.0, (-m2).clamp(min=0) * err))
        # rounding: pad by a few ulps of every magnitude in the line's evaluation
        xmax = torch.maximum(l.abs(), u.abs())
        scale_l = fl.abs().nan_to_num(0) + fu.abs().nan_to_num(0) + (lo_a.abs() * xmax).nan_to_num(0)
        scale_u = fl.abs().nan_to_num(0) + fu.abs().nan_to_num(0) + (up_a.abs() * xmax).nan_to_num(0)
        lo_b = _pad(lo_b, scale_l + lo_b.abs().nan_to_num(0), -1.0)
        up_b = _pad(up_b, scale_u + up_b.abs().nan_to_num(0), 1.0)
        zero = torch.zeros_like(l)
        lo_a, lo_b = _finite_or(lo_a, lo_b, zero, f_lo)
        up_a, up_b = _finite_or(up_a, up_b, zero, f_hi)
        # per side, the constant interval bound where it is higher (lower) at the midpoint
        use_c_lo = (f_lo >= lo_a * mid + lo_b) | ~torch.isfinite(lo_a * mid + lo_b)
        use_c_up = (f_hi <= up_a * mid + up_b) | ~torch.isfinite(up_a * mid + up_b)
        lo_a, lo_b = torch.where(use_c_lo, zero, lo_a), torch.where(use_c_lo, f_lo, lo_b)
        up_a, up_b = torch.where(use_c_up, zero, up_a), torch.where(use_c_up, f_hi, up_b)
    return lo_a, lo_b, up_a, up_b


def clamp_lines(l: torch.Tensor, u: torch.Tensor, a, b):
    """Lines for ``min(max(x, a), b)`` on ``[l, u]`` with constants ``a <= b`` (tensors that
    broadcast to ``l``, or numbers; ``-inf``/``inf`` or ``None`` for a missing side).

    The function is non-decreasing and piecewise linear.  With ``c = clamp(l)``, ``d =
    clamp(u)``: the lower line passes through ``(u, d)`` and the point where ``f`` leaves its
    lower plateau, the upper line through ``(l, c)`` and the point where ``f`` reaches its upper
    plateau (each below / above ``f`` by convexity of each piece); where both kinks lie outside
    ``[l, u]`` the function is affine there and the lines are exact."""
    a = torch.as_tensor(-math.inf if a is None else a, dtype=l.dtype, device=l.device).expand_as(l)
    b = torch.as_tensor(math.inf if b is None else b, dtype=l.dtype, device=l.device).expand_as(l)
    c = torch.minimum(torch.maximum(l, a), b)
    d = torch.minimum(torch.maximum(u, a), b)
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    # the lower line: through (u, d) and (p, c), p = max(l, a) (where f leaves the plateau c)
    p = torch.maximum(l, torch.minimum(a, u))
    q = torch.minimum(u, torch.maximum(b, l))  # where f reaches the plateau d
    # lower: slope (d - c) / (u - p); at x <= p the line is <= c = f(x), on [p, q] below the
    # identity piece (it meets x at p and lies below d <= x... on [q, u] below d)
    den_l = u - p
    lo_a = torch.where(den_l > 0, (d - c) / torch.where(den_l > 0, den_l, one), zero)
    lo_b = c - lo_a * p
    den_u = q - l
    up_a = torch.where(den_u > 0, (d - c) / torch.where(den_u > 0, den_u, one), zero)
    up_b = c - up_a * l
    # the lines meet the constant bounds c <= f <= d: keep the better by the midpoint
    mid = (l + u) / 2
    use_c = c >= lo_a * mid + lo_b
    lo_a, lo_b = torch.where(use_c, zero, lo_a), torch.where(use_c, c, lo_b)
    use_d = d <= up_a * mid + up_b
    up_a, up_b = torch.where(use_d, zero, up_a), torch.where(use_d, d, up_b)
    # rounding: a few ulps outward
    scale = c.abs() + d.abs() + torch.maximum(l.abs(), u.abs()).nan_to_num(0)
    lo_b = torch.where(lo_a == 0, lo_b, _pad(lo_b, scale, -1.0))
    up_b = torch.where(up_a == 0, up_b, _pad(up_b, scale, 1.0))
    return lo_a, lo_b, up_a, up_b


def abs_lines(l: torch.Tensor, u: torch.Tensor):
    """``|x|``: the chord above; below, ``x`` (``l >= 0``), ``-x`` (``u <= 0``), or across zero
    the line through the origin with slope ``sign(l + u)`` (every slope in [-1, 1] is sound)."""
    one = torch.ones_like(l)
    slope = torch.where(l >= 0, one, torch.where(u <= 0, -one, torch.sign(l + u)))
    zero = torch.zeros_like(l)
    narrow = (u - l) <= 0
    width = torch.where(narrow, one, u - l)
    chord_a = torch.where(narrow, slope, (u.abs() - l.abs()) / width)
    chord_b = l.abs() - chord_a * l
    chord_b = _pad(chord_b, u.abs() + l.abs(), 1.0)
    return slope, zero, chord_a, chord_b
