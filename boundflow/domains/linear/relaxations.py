"""Linear relaxations of elementwise nonlinearities over an input interval ``[l, u]``:
``a_l x + b_l <= f(x) <= a_u x + b_u`` for every ``x`` in ``[l, u]`` (sound in exact
arithmetic; the containment tests check them by dense sampling)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["Relaxation", "relu", "leaky_relu", "s_shaped", "RELAXATIONS"]

Relaxation = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def relu(l: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor | None = None) -> Relaxation:
    """Upper: the chord through ``(l, 0)`` and ``(u, u)`` where unstable.  Lower: slope
    ``alpha`` in [0, 1] through the origin (CROWN's adaptive choice ``u >= -l`` by default)."""
    return leaky_relu(l, u, 0.0, alpha)


def leaky_relu(l: torch.Tensor, u: torch.Tensor, slope: float, alpha: torch.Tensor | None = None) -> Relaxation:
    """``f(x) = x`` for ``x >= 0``, ``slope * x`` below, for any real ``slope``.

    Where the sign is undecided, ``f`` is convex for ``slope <= 1`` and concave for
    ``slope > 1``.  The convex side of the relaxation is the chord through ``(l, f(l))`` and
    ``(u, f(u))``; the other side is a line through the origin whose slope lies between
    ``slope`` and 1 (every such line is on the correct side of both pieces), chosen by
    CROWN's adaptive rule or by ``alpha`` in [0, 1] (0 = ``slope``, 1 = 1)."""
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    one = torch.ones_like(l)
    s = torch.full_like(l, slope)
    width = torch.where(unstable, u - l, one)
    chord_a = (u - slope * l) / width
    chord_b = l * (slope - chord_a)
    if alpha is None:
        # the side of the box with the larger extent gets the exact piece
        origin = torch.where(u >= -l, one, s)
    else:
        origin = slope + (1 - slope) * alpha.clamp(0, 1)
    stable_a = torch.where(active, one, s)
    zero = torch.zeros_like(l)
    chord_a = torch.where(unstable, chord_a, stable_a)
    chord_b = torch.where(unstable, chord_b, zero)
    origin = torch.where(unstable, origin, stable_a)
    if slope <= 1:  # convex: chord above, origin line below
        return origin, zero, chord_a, chord_b
    return chord_a, chord_b, origin, zero  # concave: chord below, origin line above


def _tangent(f, df, d):
    a = df(d)
    return a, f(d) - a * d


def _bisect(cond: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, iters: int = 40):
    """Smallest ``d`` in [lo, hi] (up to bisection accuracy, rounded up) with ``cond(d)`` True,
    assuming monotone ``cond`` (False then True) and ``cond(hi)`` True."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = cond(mid)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return hi


def _tangent_ranges(f, df, l: torch.Tensor, u: torch.Tensor, fl: torch.Tensor, fu: torch.Tensor):
    """Across zero, the ends of the valid tangent ranges: ``d_u``, the smallest ``d`` in
    ``[0, u]`` whose tangent passes above ``(l, f(l))`` (every ``d`` in ``[d_u, u]`` gives an
    upper line), and ``d_l``, the largest ``d`` in ``[l, 0]`` whose tangent passes below
    ``(u, f(u))``; with ``has_u``/``has_l`` (whether any ``d`` qualifies).  Bisection returns
    the valid side, so the ends are sound at any accuracy."""

    # both searches in one: row 0 searches d in [0, u] (the tangent at d must pass above
    # (l, f(l))), row 1 searches t in [0, -l] (the tangent at -t must pass below (u, f(u)))
    sign = torch.stack([torch.ones_like(l), -torch.ones_like(l)])
    ref_x, ref_f = torch.stack([l, u]), torch.stack([fl, fu])

    def passes(t):
        a, b = _tangent(f, df, sign * t)
        return sign * (a * ref_x + b - ref_f) >= 0

    ends = torch.stack([u.clamp(min=0), -l.clamp(max=0)])
    d = _bisect(passes, torch.zeros_like(ends), ends, iters=20)
    has = passes(ends)
    return d[0], has[0], -d[1], has[1]


def s_shaped(f, df, l: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor | None = None) -> Relaxation:
    """Sigmoid-like ``f``: convex on x <= 0, concave on x >= 0 (sigmoid, tanh).

    * ``u <= 0`` (convex): upper = chord; lower = tangent at the midpoint.
    * ``l >= 0`` (concave): lower = chord; upper = tangent at the midpoint.
    * ``l < 0 < u``: every tangent at ``d`` in ``[d_u, u]`` is an upper bound, where ``d_u`` is
      the smallest ``d >= 0`` whose tangent passes above ``(l, f(l))`` (above f on the concave
      part by concavity, above the convex part's chord by linearity; the line's value at ``l``
      grows with ``d`` there, so every larger ``d`` passes too).  The tangent point is the one of
      those nearest the midpoint, ``max(d_u, m)`` (as auto_LiRPA chooses); the chord if there is
      none.  Lower symmetric on ``[l, 0]``: ``min(d_l, m)``.

    ``alpha`` (alpha-CROWN; shape ``(2, *l.shape)``, clamped to [0, 1]): the tangent points
    as parameters, ``alpha[0]`` for the lower line and ``alpha[1]`` for the upper, each moving
    the point across its whole valid range (``[l, u]`` on a convex/concave interval,
    ``[l, d_l]`` and ``[d_u, u]`` across zero), so every value gives sound lines; the chords
    have no parameter.  :func:`s_shaped_alpha_init` gives the values of the default choice.
    """
    fl, fu = f(l), f(u)
    same = (u - l) <= 1e-12
    width = torch.where(same, torch.ones_like(l), u - l)
    chord_a = torch.where(same, df(l), (fu - fl) / width)
    chord_b = fl - chord_a * l
    mid = (l + u) / 2
    if alpha is not None:
        alpha = alpha.clamp(0, 1)
    d_lo_c = mid if alpha is None else l + alpha[0] * (u - l)  # convex: the lower tangent point
    d_up_c = mid if alpha is None else l + alpha[1] * (u - l)  # concave: the upper tangent point
    tan_lo_a, tan_lo_b = _tangent(f, df, d_lo_c)
    tan_up_a, tan_up_b = _tangent(f, df, d_up_c)

    # mixed case: tangents at d in [d_u, u] (upper) and [l, d_l] (lower)
    d_u, has_u, d_l, has_l = _tangent_ranges(f, df, l, u, fl, fu)
    u_pos, l_neg = u.clamp(min=0), l.clamp(max=0)
    if alpha is None:
        d_u = torch.maximum(d_u, torch.minimum(mid, u_pos))  # the valid tangent point nearest the midpoint
    else:
        d_u = d_u + alpha[1] * (u_pos - d_u)
    up_a, up_b = _tangent(f, df, d_u)
    up_a = torch.where(has_u, up_a, chord_a)
    up_b = torch.where(has_u, up_b, chord_b)

    if alpha is None:
        d_l = torch.minimum(d_l, torch.maximum(mid, l_neg))
    else:
        d_l = l_neg + alpha[0] * (d_l - l_neg)
    lo_a, lo_b = _tangent(f, df, d_l)
    lo_a = torch.where(has_l, lo_a, chord_a)
    lo_b = torch.where(has_l, lo_b, chord_b)

    convex, concave = u <= 0, l >= 0
    a_u = torch.where(convex, chord_a, torch.where(concave, tan_up_a, up_a))
    b_u = torch.where(convex, chord_b, torch.where(concave, tan_up_b, up_b))
    a_l = torch.where(convex, tan_lo_a, torch.where(concave, chord_a, lo_a))
    b_l = torch.where(convex, tan_lo_b, torch.where(concave, chord_b, lo_b))
    # guard against rounding in the line evaluation: make the lines hold at both endpoints
    b_u = b_u + torch.clamp(torch.maximum(fl - (a_u * l + b_u), fu - (a_u * u + b_u)), min=0)
    b_l = b_l - torch.clamp(torch.maximum((a_l * l + b_l) - fl, (a_l * u + b_l) - fu), min=0)
    return a_l, b_l, a_u, b_u


def s_shaped_alpha_init(f, df, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The ``alpha`` (shape ``(2, *l.shape)``) whose lines are :func:`s_shaped`'s default ones:
    the midpoint on convex/concave intervals, ``min(d_l, m)`` and ``max(d_u, m)`` across zero."""
    fl, fu = f(l), f(u)
    mid = (l + u) / 2
    u_pos, l_neg = u.clamp(min=0), l.clamp(max=0)
    d_u, _, d_l, _ = _tangent_ranges(f, df, l, u, fl, fu)

    def frac(x, a, b):  # where x sits in [a, b], as a fraction
        w = b - a
        return torch.where(w > 0, (x - a) / torch.where(w > 0, w, torch.ones_like(w)), torch.full_like(w, 0.5))

    mixed = (l < 0) & (u > 0)
    a_lo = torch.where(mixed, frac(torch.minimum(d_l, torch.maximum(mid, l_neg)), l_neg, d_l), torch.full_like(l, 0.5))
    a_up = torch.where(mixed, frac(torch.maximum(d_u, torch.minimum(mid, u_pos)), d_u, u_pos), torch.full_like(l, 0.5))
    return torch.stack([a_lo, a_up]).clamp(0, 1)


def _dsigmoid(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def _dtanh(x):
    return 1 - torch.tanh(x) ** 2


def sigmoid(l, u, alpha=None) -> Relaxation:
    return s_shaped(torch.sigmoid, _dsigmoid, l, u, alpha)


def tanh(l, u, alpha=None) -> Relaxation:
    return s_shaped(torch.tanh, _dtanh, l, u, alpha)


# S-shaped activations whose tangent points alpha-CROWN optimises: op -> (f, f')
S_SHAPED = {
    torch.ops.aten.sigmoid.default: (torch.sigmoid, _dsigmoid),
    torch.ops.aten.tanh.default: (torch.tanh, _dtanh),
}


def convex(f, df, l: torch.Tensor, u: torch.Tensor, concave: bool = False, alpha=None) -> Relaxation:
    """Convex ``f``: upper = chord, lower = tangent at the midpoint (both sound on [l, u]);
    concave: the reverse.  ``alpha`` (alpha-CROWN; shape of ``l``, clamped to [0, 1]): the
    tangent point ``l + alpha (u - l)`` instead of the midpoint; every tangent of a convex
    (concave) function lies below (above) it everywhere, so every value is sound."""
    fl, fu = f(l), f(u)
    same = (u - l) <= 1e-12
    width = torch.where(same, torch.ones_like(l), u - l)
    mid = (l + u) / 2
    chord_a = torch.where(same, df(mid), (fu - fl) / width)
    chord_b = fl - chord_a * l
    t = mid if alpha is None else l + alpha.clamp(0, 1) * (u - l)
    tan_a = df(t)
    tan_b = f(t) - tan_a * t
    if concave:
        return chord_a, chord_b, tan_a, tan_b
    return tan_a, tan_b, chord_a, chord_b


def _log_relax(l, u, alpha=None):
    from boundflow.errors import DomainError

    if (l <= 0).any():
        raise DomainError("linear relaxation of log needs a positive input interval")
    return convex(torch.log, torch.reciprocal, l, u, concave=True, alpha=alpha)


aten = torch.ops.aten

RELAXATIONS: dict = {
    aten.relu.default: lambda node, l, u, alpha=None: relu(l, u, alpha),
    aten.leaky_relu.default: lambda node, l, u, alpha=None: leaky_relu(
        l, u, float(node.args[1]) if len(node.args) > 1 else 0.01, alpha
    ),
    aten.sigmoid.default: lambda node, l, u, alpha=None: sigmoid(l, u, alpha),
    aten.tanh.default: lambda node, l, u, alpha=None: tanh(l, u, alpha),
    aten.exp.default: lambda node, l, u, alpha=None: convex(torch.exp, torch.exp, l, u, alpha=alpha),
    aten.log.default: lambda node, l, u, alpha=None: _log_relax(l, u, alpha),
    aten.softplus.default: lambda node, l, u, alpha=None: _softplus_relax(node, l, u, alpha),
}
# convex / concave activations whose tangent point alpha-CROWN optimises (alpha = 1/2: CROWN's)
TANGENT_POINT = {aten.exp.default, aten.log.default, aten.softplus.default}


def _softplus_relax(node, l, u, alpha=None):
    beta = float(node.args[1]) if len(node.args) > 1 else 1.0
    threshold = float(node.args[2]) if len(node.args) > 2 else 20.0
    if beta <= 0 or (torch.maximum(l.abs(), u.abs()) * beta >= threshold).any():
        # torch switches to the identity above the threshold (a small jump): not convex there
        from boundflow.errors import UnsupportedOperation

        raise UnsupportedOperation("linear relaxation of softplus beyond its threshold; use method='ibp'")
    f = lambda x: torch.nn.functional.softplus(x, beta, threshold)  # noqa: E731
    return convex(f, lambda x: torch.sigmoid(beta * x), l, u, alpha=alpha)


def _general_relaxations() -> dict:
    """The general elementwise nonlinearities (:mod:`boundflow.domains.linear.curved`)."""
    import math as _m

    from boundflow.domains.linear import curved as cv

    def ival(fn):
        return lambda l, u: cv.interval_of(fn, l, u)

    def sin(node, l, u, alpha=None):
        return cv.curved(torch.sin, torch.cos, ival(lambda t: -torch.sin(t)), l, u)

    def cos(node, l, u, alpha=None):
        return cv.curved(torch.cos, lambda t: -torch.sin(t), ival(lambda t: -torch.cos(t)), l, u)

    def power(node, l, u, alpha=None):
        p = float(node.args[1])
        if p == 0:
            one = torch.ones_like(l)
            return cv.interval_lines(one, one)
        if p == 1:
            one, zero = torch.ones_like(l), torch.zeros_like(l)
            return one, zero, one.clone(), zero.clone()
        return cv.curved(
            lambda t: torch.pow(t, p),
            lambda t: p * torch.pow(t, p - 1),
            ival(lambda t: torch.pow(t, p - 2) * (p * (p - 1))),
            l,
            u,
        )

    def sqrt(node, l, u, alpha=None):
        return cv.curved(torch.sqrt, lambda t: 0.5 / torch.sqrt(t), ival(lambda t: torch.pow(t, -1.5) * -0.25), l, u)

    def rsqrt(node, l, u, alpha=None):
        return cv.curved(
            torch.rsqrt, lambda t: -0.5 * torch.pow(t, -1.5), ival(lambda t: torch.pow(t, -2.5) * 0.75), l, u
        )

    def reciprocal(node, l, u, alpha=None):
        return cv.curved(torch.reciprocal, lambda t: -1 / (t * t), ival(lambda t: torch.pow(t, -3) * 2.0), l, u)

    k = 2 / _m.sqrt(_m.pi)

    def erf(node, l, u, alpha=None):
        return cv.curved(
            torch.erf, lambda t: k * torch.exp(-t * t), ival(lambda t: t * torch.exp(-(t * t)) * (-2 * k)), l, u
        )

    def step(fn):
        return lambda node, l, u, alpha=None: cv.interval_lines(*cv.interval_of(fn, l, u))

    def clamp(node, l, u, alpha=None):
        a = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        return cv.clamp_lines(l, u, a, b)

    def hardtanh(node, l, u, alpha=None):
        a = node.args[1] if len(node.args) > 1 else -1.0
        b = node.args[2] if len(node.args) > 2 else 1.0
        return cv.clamp_lines(l, u, a, b)

    return {
        aten.sin.default: sin,
        aten.cos.default: cos,
        aten.pow.Tensor_Scalar: power,
        aten.sqrt.default: sqrt,
        aten.rsqrt.default: rsqrt,
        aten.reciprocal.default: reciprocal,
        aten.erf.default: erf,
        aten.abs.default: lambda node, l, u, alpha=None: cv.abs_lines(l, u),
        aten.sign.default: step(torch.sign),
        aten.sgn.default: step(torch.sgn),
        aten.floor.default: step(torch.floor),
        aten.ceil.default: step(torch.ceil),
        aten.round.default: step(torch.round),
        aten.trunc.default: step(torch.trunc),
        aten.clamp.default: clamp,
        aten.clamp_min.default: lambda node, l, u, alpha=None: cv.clamp_lines(l, u, node.args[1], None),
        aten.clamp_max.default: lambda node, l, u, alpha=None: cv.clamp_lines(l, u, None, node.args[1]),
        aten.hardtanh.default: hardtanh,
    }


RELAXATIONS.update(_general_relaxations())
