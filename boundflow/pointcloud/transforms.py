"""Parametric 3-D transformations of point clouds and their relaxations (3DCertify).

Each transformation maps points ``p = (x, y, z)`` and parameters ``theta`` (radians, or the
tapering/shearing coefficients) to new points, written once with ``+ - *``, ``sin`` and ``cos``
so the same code evaluates on plain tensors and on second-order *jets* of intervals: a jet
carries bounds on a value, its gradient and its Hessian in ``theta``.  Evaluated over a box of
``theta``, a jet's value is the interval relaxation and its Hessian bounds the Taylor remainder;
evaluated at the centre, it gives the Taylor polynomial.

Names: ``rotation-x``, ``rotation-y``, ``rotation-z``, ``twisting-z``, ``tapering-z`` (two
parameters ``a, b``), ``shearing-z`` (two parameters ``s_x, s_y``); compositions ``"A+B"``
apply ``B`` first, parameters ordered as written (``A``'s, then ``B``'s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from boundflow.domains.interval import arith

__all__ = ["Jet", "TRANSFORMS", "parse", "apply", "interval_bounds", "taylor_bounds", "n_params"]

Bounds = tuple[torch.Tensor, torch.Tensor]


class Jet:
    """Bounds on a value ``v``, its gradient ``g[i]`` and Hessian ``h[i][j]`` w.r.t. ``k``
    parameters (each a pair of tensors).  Arithmetic follows the sum, product and chain rules in
    interval arithmetic, so every bound holds for every parameter in the box the jet was seeded
    with."""

    __slots__ = ("v", "g", "h", "k")

    def __init__(self, v: Bounds, g: list[Bounds], h: list[list[Bounds]]):
        self.v, self.g, self.h, self.k = v, g, h, len(g)

    @staticmethod
    def const(t: torch.Tensor | float, k: int, like: torch.Tensor) -> Jet:
        t = torch.as_tensor(t, dtype=like.dtype).expand_as(like)
        z = torch.zeros_like(like)
        return Jet((t, t), [(z, z)] * k, [[(z, z)] * k for _ in range(k)])

    @staticmethod
    def variable(lo: float, hi: float, i: int, k: int, like: torch.Tensor) -> Jet:
        z, one = torch.zeros_like(like), torch.ones_like(like)
        g = [(one, one) if j == i else (z, z) for j in range(k)]
        return Jet((z + lo, z + hi), g, [[(z, z)] * k for _ in range(k)])

    def _lift(self, o) -> Jet:
        return o if isinstance(o, Jet) else Jet.const(o, self.k, self.v[0])

    def __add__(self, o) -> Jet:
        o = self._lift(o)
        return Jet(
            arith.add(self.v, o.v),
            [arith.add(a, b) for a, b in zip(self.g, o.g)],
            [[arith.add(a, b) for a, b in zip(ra, rb)] for ra, rb in zip(self.h, o.h)],
        )

    __radd__ = __add__

    def __neg__(self) -> Jet:
        return Jet(arith.neg(self.v), [arith.neg(a) for a in self.g], [[arith.neg(a) for a in r] for r in self.h])

    def __sub__(self, o) -> Jet:
        return self + (-self._lift(o))

    def __rsub__(self, o) -> Jet:
        return self._lift(o) - self

    def __mul__(self, o) -> Jet:
        o = self._lift(o)
        m = arith.mul
        g = [arith.add(m(a, o.v), m(self.v, b)) for a, b in zip(self.g, o.g)]
        h = [
            [
                arith.add(
                    arith.add(m(self.h[i][j], o.v), m(self.v, o.h[i][j])),
                    arith.add(m(self.g[i], o.g[j]), m(self.g[j], o.g[i])),
                )
                for j in range(self.k)
            ]
            for i in range(self.k)
        ]
        return Jet(m(self.v, o.v), g, h)

    __rmul__ = __mul__


def _trig(a: Jet, f: Callable, df: Callable, ddf: Callable) -> Jet:
    """``f(a)`` by the chain rule: ``g = f'(a) g_a``, ``H = f''(a) g_a g_a^T + f'(a) H_a``."""
    m = arith.mul
    d1, d2 = df(a.v), ddf(a.v)
    g = [m(d1, gi) for gi in a.g]
    h = [[arith.add(m(d2, m(a.g[i], a.g[j])), m(d1, a.h[i][j])) for j in range(a.k)] for i in range(a.k)]
    return Jet(f(a.v), g, h)


class _JetOps:
    @staticmethod
    def sin(a):
        return _trig(a, arith.sin, arith.cos, lambda v: arith.neg(arith.sin(v)))

    @staticmethod
    def cos(a):
        return _trig(a, arith.cos, lambda v: arith.neg(arith.sin(v)), lambda v: arith.neg(arith.cos(v)))


class _TorchOps:
    sin = staticmethod(torch.sin)
    cos = staticmethod(torch.cos)


# -- the transformations: (x, y, z, theta list, ops) -> (x', y', z') -------------------------


def _rot_x(x, y, z, t, o):
    c, s = o.cos(t[0]), o.sin(t[0])
    return x, y * c - z * s, y * s + z * c


def _rot_y(x, y, z, t, o):
    c, s = o.cos(t[0]), o.sin(t[0])
    return x * c + z * s, y, -(x * s) + z * c


def _rot_z(x, y, z, t, o):
    c, s = o.cos(t[0]), o.sin(t[0])
    return x * c - y * s, x * s + y * c, z


def _twist_z(x, y, z, t, o):
    a = t[0] * z
    c, s = o.cos(a), o.sin(a)
    return x * c - y * s, x * s + y * c, z


def _taper_z(x, y, z, t, o):
    f = 0.5 * (t[0] * t[0]) * z + t[1] * z + 1.0
    return f * x, f * y, z


def _shear_z(x, y, z, t, o):
    return x + t[0] * z, y + t[1] * z, z


@dataclass(frozen=True)
class Transform:
    name: str
    n_params: int
    fn: Callable


TRANSFORMS = {
    t.name: t
    for t in (
        Transform("rotation-x", 1, _rot_x),
        Transform("rotation-y", 1, _rot_y),
        Transform("rotation-z", 1, _rot_z),
        Transform("twisting-z", 1, _twist_z),
        Transform("tapering-z", 2, _taper_z),
        Transform("shearing-z", 2, _shear_z),
    )
}


def parse(name: str) -> list[Transform]:
    """``"A+B"`` -> ``[A, B]`` (``B`` is applied first); unknown names raise ``ValueError``."""
    parts = [p.strip() for p in name.split("+")]
    for p in parts:
        if p not in TRANSFORMS:
            raise ValueError(f"unknown transformation {p!r} in {name!r}; choose from {', '.join(TRANSFORMS)}")
    return [TRANSFORMS[p] for p in parts]


def n_params(name: str) -> int:
    return sum(t.n_params for t in parse(name))


def _run(chain: list[Transform], x, y, z, theta: list, ops):
    # theta is ordered as written; the rightmost transformation is applied first
    offsets, k = [], 0
    for t in chain:
        offsets.append(k)
        k += t.n_params
    for t, off in reversed(list(zip(chain, offsets))):
        x, y, z = t.fn(x, y, z, theta[off : off + t.n_params], ops)
    return x, y, z


def apply(points: torch.Tensor, transform: str, theta) -> torch.Tensor:
    """``T(points, theta)`` on plain tensors: ``points`` (..., 3), ``theta`` (k,)."""
    chain = parse(transform)
    theta = torch.as_tensor(theta, dtype=points.dtype).reshape(-1)
    if theta.numel() != sum(t.n_params for t in chain):
        raise ValueError(f"{transform} takes {sum(t.n_params for t in chain)} parameters, got {theta.numel()}")
    x, y, z = points.unbind(-1)
    out = _run(chain, x, y, z, list(theta.unbind(0)), _TorchOps)
    return torch.stack([torch.as_tensor(c, dtype=points.dtype).expand_as(x) for c in out], -1)


def _check(points, transform, lo, hi):
    chain = parse(transform)
    k = sum(t.n_params for t in chain)
    lo = torch.as_tensor(lo, dtype=torch.float64).reshape(-1)
    hi = torch.as_tensor(hi, dtype=torch.float64).reshape(-1)
    if lo.numel() != k or hi.numel() != k:
        raise ValueError(f"{transform} takes {k} parameters; theta bounds have {lo.numel()} and {hi.numel()}")
    if (lo > hi).any():
        raise ValueError(f"theta lower > upper in {int((lo > hi).sum())} of {k} parameters")
    pts = torch.as_tensor(points, dtype=torch.float64)
    if pts.dim() != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(pts.shape)}")
    return chain, k, lo, hi, pts


def jets(points: torch.Tensor, transform: str, theta_lower, theta_upper) -> list[Jet]:
    """Jets of the three transformed coordinates over the theta box (per point)."""
    chain, k, lo, hi, pts = _check(points, transform, theta_lower, theta_upper)
    like = pts[:, 0]
    th = [Jet.variable(float(lo[i]), float(hi[i]), i, k, like) for i in range(k)]
    x, y, z = (Jet.const(pts[:, i], k, like) for i in range(3))
    return list(_run(chain, x, y, z, th, _JetOps))


def interval_bounds(points: torch.Tensor, transform: str, theta_lower, theta_upper) -> Bounds:
    """Lower and upper bounds ``(N, 3)`` of ``T(p, theta)`` for every theta in the box (interval
    arithmetic on the transformation's formula)."""
    out = jets(points, transform, theta_lower, theta_upper)
    return torch.stack([j.v[0] for j in out], -1), torch.stack([j.v[1] for j in out], -1)


def taylor_bounds(points: torch.Tensor, transform: str, theta_lower, theta_upper):
    """First-order Taylor relaxation at the box centre ``c``: returns ``(slope (N, 3, k),
    offset_lower (N, 3), offset_upper (N, 3))`` with ``T(p, theta) in slope @ theta + [offset_lower,
    offset_upper]`` for every theta in the box.  The remainder ``1/2 (theta-c)^T H (theta-c)`` is
    bounded with the interval Hessian over the box; the slope is the (midpoint of the) gradient
    at ``c``, its rounding covered in the offsets."""
    chain, k, lo, hi, pts = _check(points, transform, theta_lower, theta_upper)
    c = (lo + hi) / 2
    r = (hi - lo) / 2
    at_c = jets(pts, transform, c, c)
    over = jets(pts, transform, lo, hi)
    slopes, off_lo, off_hi = [], [], []
    for jc, jb in zip(at_c, over):
        g_lo = torch.stack([g[0] for g in jc.g], -1)  # (N, k)
        g_hi = torch.stack([g[1] for g in jc.g], -1)
        s = (g_lo + g_hi) / 2
        g_rad = (g_hi - g_lo) / 2
        # remainder: 1/2 sum_i H_ii [0, r_i^2] + sum_{i<j} H_ij [-r_i r_j, r_i r_j]
        rem = (torch.zeros_like(jc.v[0]), torch.zeros_like(jc.v[0]))
        for i in range(k):
            for j in range(i, k):
                h = jb.h[i][j]
                if i == j:
                    box = (torch.zeros_like(h[0]), torch.full_like(h[0], 0.5 * float(r[i]) ** 2))
                else:
                    rr = float(r[i] * r[j])
                    box = (torch.full_like(h[0], -rr), torch.full_like(h[0], rr))
                rem = arith.add(rem, arith.mul(h, box))
        lin_err = (g_rad * r).sum(-1)  # gradient rounding at c
        sc = (s * c).sum(-1)
        base_lo, base_hi = jc.v[0] - sc, jc.v[1] - sc
        pad = 1e-12 * (1 + base_lo.abs() + base_hi.abs() + (s.abs() * c.abs()).sum(-1))
        slopes.append(s)
        off_lo.append(base_lo + rem[0] - lin_err - pad)
        off_hi.append(base_hi + rem[1] + lin_err + pad)
    return torch.stack(slopes, 1), torch.stack(off_lo, -1), torch.stack(off_hi, -1)
