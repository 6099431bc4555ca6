"""Back-substitution rules for ops of two varying operands, ``Clip``-like ops with constant
tensor bounds, and the interval fallback that lets every op with an interval rule take part in
the linear domain.

* ``maximum``/``minimum`` (and ``fmax``/``fmin``, ``clamp`` with tensor bounds): with one
  constant operand, the clamp lines of :func:`~boundflow.domains.linear.curved.clamp_lines`;
  with two varying operands, ``max(x, y) = x + relu(y - x)`` and ``min(x, y) = x - relu(x - y)``
  with ReLU's lines on the interval of the difference (``[l_y - u_x, u_y - l_x]``, a superset of
  the difference's range, so the lines hold wherever ``x`` and ``y`` lie in their boxes).
* ``mul`` of two varying operands: McCormick's planes (exact in exact arithmetic on the box of
  the two operands), the one higher (lower) at the box centre per entry; ``x * x`` the convex
  lines of ``x^2``.
* ``where(cond, x, y)`` with a constant condition: affine (the generic vector-Jacobian rule).
* Everything else without a rule (``softmax``, a product of two varying matrices, ``amax``,
  ``argmax`` read as a value, a varying condition or divisor, ...): :func:`interval_back`, the
  node's own sound interval bounds ``[l, u]`` (every node has them; the inputs of such a node
  get CROWN bounds first, so they are as tight as CROWN makes them) concretise the coefficients
  that reach it: ``A y >= A_+ l + A_- u``.  Looser than a relaxation, never unsound, and never
  a refusal.
"""

from __future__ import annotations

import torch
from torch import fx

from boundflow.domains.linear.curved import clamp_lines, curved
from boundflow.domains.linear.relaxations import relu
from boundflow.domains.linear.state import BoundState, _add, _shape, _sum_tail

aten = torch.ops.aten

__all__ = ["JOINT", "interval_back", "matmul_back", "reduce_to"]


def reduce_to(A: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Coefficients ``(S, *out)`` of a broadcast result summed down to an operand of ``shape``
    (a batch dimension of 1 in ``A`` is kept: it broadcasts over the batch)."""
    extra = A.dim() - 1 - len(shape)
    if extra > 0:
        A = A.sum(dim=tuple(range(1, 1 + extra)))
    dims = [i + 1 for i, (s, a) in enumerate(zip(shape, A.shape[1:], strict=True)) if s == 1 and a != 1]
    return A.sum(dim=dims, keepdim=True) if dims else A


def _to(A: torch.Tensor, shape) -> torch.Tensor:
    """:func:`reduce_to` an operand of ``shape`` (its batch dimension taken from ``A``)."""
    return reduce_to(A, (A.shape[1], *shape[1:]))


def _masked_dot(A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``sum(A_+ lo + A_- hi)`` per (S, B), with ``0 * inf`` read as 0."""
    zero = torch.zeros((), dtype=A.dtype, device=A.device)
    return _sum_tail(torch.where(A > 0, A * lo, zero) + torch.where(A < 0, A * hi, zero))


def interval_back(state: BoundState, node: fx.Node, lA, uA, pending, start):
    """Concretise the coefficients at ``node`` with its interval bounds (always sound)."""
    lo, hi = state.lower[node], state.upper[node]
    return _masked_dot(lA, lo, hi), _masked_dot(uA, hi, lo)


def _is_var(state: BoundState, a) -> bool:
    return isinstance(a, fx.Node) and a not in state.const


def _const(state: BoundState, a):
    return state.const[a] if isinstance(a, fx.Node) else a


def _bounds_as(state: BoundState, a: fx.Node, shape) -> tuple[torch.Tensor, torch.Tensor]:
    return state.lower[a].expand(shape), state.upper[a].expand(shape)


def _through(A, a_p, b_p, a_n, b_n):
    """``(A_+ a_p + A_- a_n, sum(A_+ b_p + A_- b_n))``."""
    pos, neg = A.clamp(min=0), A.clamp(max=0)
    return pos * a_p + neg * a_n, _sum_tail(pos * b_p + neg * b_n)


def _elementwise_back(state, node, x, lines, lA, uA, pending):
    a_l, b_l, a_u, b_u = lines
    gl, dl = _through(lA, a_l, b_l, a_u, b_u)
    gu, du = _through(uA, a_u, b_u, a_l, b_l)
    shape = _shape(state, x)
    _add(pending, x, _to(gl, shape), _to(gu, shape))
    return dl, du


_MAX = {aten.maximum.default, aten.fmax.default, aten.clamp_min.Tensor}
_MIN = {aten.minimum.default, aten.fmin.default, aten.clamp_max.Tensor}


def _minmax_back(state: BoundState, node: fx.Node, lA, uA, pending, start):
    """``max``/``min`` of two operands, or ``clamp`` with tensor bounds."""
    out_shape = _shape(state, node)
    if node.target is aten.clamp.Tensor:
        x = node.args[0]
        a = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        if not _is_var(state, x) or _is_var(state, a) or _is_var(state, b):
            return interval_back(state, node, lA, uA, pending, start)
        lo, hi = _bounds_as(state, x, out_shape)
        lines = clamp_lines(lo, hi, _const(state, a), _const(state, b))
        return _elementwise_back(state, node, x, lines, lA, uA, pending)
    x, y = node.args[:2]
    is_max = node.target in _MAX
    if _is_var(state, x) and _is_var(state, y) and x is not y:
        lx, ux = _bounds_as(state, x, out_shape)
        ly, uy = _bounds_as(state, y, out_shape)
        sx, sy = _shape(state, x), _shape(state, y)
        if is_max:  # x + relu(y - x)
            a_l, b_l, a_u, b_u = relu(ly - ux, uy - lx)
            gl, dl = _through(lA, a_l, b_l, a_u, b_u)
            gu, du = _through(uA, a_u, b_u, a_l, b_l)
            cx_l, cx_u, cy_l, cy_u = lA - gl, uA - gu, gl, gu
        else:  # x - relu(x - y)
            a_l, b_l, a_u, b_u = relu(lx - uy, ux - ly)
            gl, dl = _through(-lA, a_l, b_l, a_u, b_u)
            gu, du = _through(-uA, a_u, b_u, a_l, b_l)
            cx_l, cx_u, cy_l, cy_u = lA + gl, uA + gu, -gl, -gu
        _add(pending, x, _to(cx_l, sx), _to(cx_u, sx))
        _add(pending, y, _to(cy_l, sy), _to(cy_u, sy))
        return dl, du
    if _is_var(state, x) and x is y:
        _add(pending, x, lA, uA)
        return 0.0, 0.0
    var, c = (x, y) if _is_var(state, x) else (y, x)
    if not _is_var(state, var) or _is_var(state, c):
        return interval_back(state, node, lA, uA, pending, start)
    cv = _const(state, c)
    lo, hi = _bounds_as(state, var, out_shape)
    lines = clamp_lines(lo, hi, cv, None) if is_max else clamp_lines(lo, hi, None, cv)
    return _elementwise_back(state, node, var, lines, lA, uA, pending)


def _square_lines(l, u):
    two = torch.full_like(l, 2.0)
    return curved(lambda t: t * t, lambda t: 2 * t, lambda a, b: (two, two), l, u, f_range=_square_range)


def _square_range(l, u):
    lo = torch.where((l <= 0) & (u >= 0), torch.zeros_like(l), torch.minimum(l * l, u * u))
    return lo, torch.maximum(l * l, u * u)


def _mul_back(state: BoundState, node: fx.Node, lA, uA, pending, start):
    """``x * y`` of two varying operands (McCormick), else the generic affine rule."""
    from boundflow.domains.linear.backward import _affine_back

    x, y = node.args[:2]
    if not (_is_var(state, x) and _is_var(state, y)):
        return _affine_back(state, node, lA, uA, pending)
    out_shape = _shape(state, node)
    lx, ux = _bounds_as(state, x, out_shape)
    if x is y:
        return _elementwise_back(state, node, x, _square_lines(lx, ux), lA, uA, pending)
    ly, uy = _bounds_as(state, y, out_shape)
    if not all(bool(torch.isfinite(t).all()) for t in (lx, ux, ly, uy)):
        return interval_back(state, node, lA, uA, pending, start)
    mx, my = (lx + ux) / 2, (ly + uy) / 2
    # lower planes: (ly, lx, -lx ly) and (uy, ux, -ux uy); upper: (uy, lx, -lx uy), (ly, ux, -ux ly)
    first_lo = (ly * mx + lx * my - lx * ly) >= (uy * mx + ux * my - ux * uy)
    lo_ax, lo_ay = torch.where(first_lo, ly, uy), torch.where(first_lo, lx, ux)
    lo_c = -lo_ax * lo_ay
    first_up = (uy * mx + lx * my - lx * uy) <= (ly * mx + ux * my - ux * ly)
    up_ax, up_ay = torch.where(first_up, uy, ly), torch.where(first_up, lx, ux)
    up_c = -up_ax * up_ay
    sx, sy = _shape(state, x), _shape(state, y)

    def side(A, pax, pay, pc, nax, nay, nc):
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        return pos * pax + neg * nax, pos * pay + neg * nay, _sum_tail(pos * pc + neg * nc)

    lxc, lyc, dl = side(lA, lo_ax, lo_ay, lo_c, up_ax, up_ay, up_c)
    uxc, uyc, du = side(uA, up_ax, up_ay, up_c, lo_ax, lo_ay, lo_c)
    _add(pending, x, _to(lxc, sx), _to(uxc, sx))
    _add(pending, y, _to(lyc, sy), _to(uyc, sy))
    return dl, du


# a product of two varying matrices whose (rows, b, n, k, m) triples would exceed this many
# entries takes its interval bounds instead (the planes are materialised per triple)
MAX_TRIPLES = 1 << 24


def matmul_back(state: BoundState, node: fx.Node, lA, uA, pending, start):
    """``bmm(X, Y)`` of two varying batches of matrices (attention): every product
    ``X_il Y_lj`` of the sum ``Z_ij`` relaxed by its McCormick planes (the one higher, resp.
    lower, at the centre of the two boxes), so ``Z`` is bounded by planes in ``X`` and ``Y``
    (the triples ``(b, i, l, j)`` are materialised: meant for attention-sized products)."""
    x, y = node.args[:2]
    lx, ux, ly, uy = state.lower[x], state.upper[x], state.lower[y], state.upper[y]
    triples = lx.shape[0] * lx.shape[1] * lx.shape[2] * ly.shape[2] * max(1, lA.shape[0])
    if x is y or triples > MAX_TRIPLES or not all(bool(torch.isfinite(t).all()) for t in (lx, ux, ly, uy)):
        return interval_back(state, node, lA, uA, pending, start)  # (too large to materialise: intervals)
    LX, UX = lx.unsqueeze(-1), ux.unsqueeze(-1)  # (b, n, k, 1)
    LY, UY = ly.unsqueeze(1), uy.unsqueeze(1)  # (b, 1, k, m)
    MX, MY = (LX + UX) / 2, (LY + UY) / 2
    first_lo = (LY * MX + LX * MY - LX * LY) >= (UY * MX + UX * MY - UX * UY)
    lo_ax, lo_ay = torch.where(first_lo, LY, UY), torch.where(first_lo, LX, UX)  # slopes on X, Y
    first_up = (UY * MX + LX * MY - LX * UY) <= (LY * MX + UX * MY - UX * LY)
    up_ax, up_ay = torch.where(first_up, UY, LY), torch.where(first_up, LX, UX)
    lo_c, up_c = -lo_ax * lo_ay, -up_ax * up_ay
    b = lx.shape[0]

    def side(A, p_ax, p_ay, p_c, n_ax, n_ay, n_c):
        A = A.expand(A.shape[0], b, *A.shape[2:])  # (s, b, n, m)
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        cx = torch.einsum("sbnm,bnkm->sbnk", pos, p_ax) + torch.einsum("sbnm,bnkm->sbnk", neg, n_ax)
        cy = torch.einsum("sbnm,bnkm->sbkm", pos, p_ay) + torch.einsum("sbnm,bnkm->sbkm", neg, n_ay)
        c = torch.einsum("sbnm,bnkm->sb", pos, p_c) + torch.einsum("sbnm,bnkm->sb", neg, n_c)
        return cx, cy, c

    full = (b, lx.shape[1], lx.shape[2], ly.shape[2])
    planes = [t.expand(full) for t in (lo_ax, lo_ay, lo_c, up_ax, up_ay, up_c)]
    lxc, lyc, dl = side(lA, *planes)
    uxc, uyc, du = side(uA, *planes[3:], *planes[:3])
    _add(pending, x, lxc, uxc)
    _add(pending, y, lyc, uyc)
    return dl, du


def _where_back(state: BoundState, node: fx.Node, lA, uA, pending, start):
    """``where(cond, x, y)``: affine where the condition is constant, else the interval fallback."""
    from boundflow.domains.linear.backward import _affine_back

    if _is_var(state, node.args[0]):
        return interval_back(state, node, lA, uA, pending, start)
    return _affine_back(state, node, lA, uA, pending)


# ATen op -> backward rule, for the ops of this module
JOINT: dict = {op: _minmax_back for op in _MAX | _MIN | {aten.clamp.Tensor}}
JOINT[aten.mul.Tensor] = _mul_back
JOINT[aten.where.self] = _where_back
