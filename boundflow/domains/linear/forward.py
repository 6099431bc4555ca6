"""Forward-mode linear bounds (DeepPoly's forward pass): every node carries a lower and an upper
linear function of the input, ``lW x + lb <= node <= uW x + ub``, propagated in graph order.

The cost grows with the input dimension (coefficients ``(B, *node, n_in)``) instead of with the
width of every layer, so it is the cheap choice for low-dimensional inputs (ACAS Xu's 5 inputs,
transformation parameters); for image-sized inputs back-substitution (``crown``) is cheaper and
tighter.  Node bounds are intersected with the interval bounds, so the result is never looser
than ``ibp``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx
from torch.func import vmap

from boundflow import deadline
from boundflow.domains.interval.rules_pooling import pool_index_windows
from boundflow.domains.linear.crown import prepare
from boundflow.domains.linear.joint import JOINT
from boundflow.domains.linear.maxpool import deeppoly_pool
from boundflow.domains.linear.ops import AFFINE_OPS, POSITIVE_LINEAR, PRODUCT_OPS, TUPLE_OPS
from boundflow.domains.linear.relaxations import RELAXATIONS
from boundflow.domains.linear.state import _flat_nodes, _shape, intersect
from boundflow.errors import UnsupportedOperation
from boundflow.graph import CapturedGraph

aten = torch.ops.aten

__all__ = ["FORWARD", "forward_bounds"]


class _Lin:
    """Lower/upper linear functions of the input: coefficients ``(B, *shape, n_in)``."""

    def __init__(self, lw, lb, uw, ub):
        self.lw, self.lb, self.uw, self.ub = lw, lb, uw, ub

    def concretize(self, x_lo, x_hi):
        xl, xh = (
            x_lo.reshape(x_lo.shape[0], *([1] * (self.lw.dim() - 2)), -1),
            x_hi.reshape(x_hi.shape[0], *([1] * (self.lw.dim() - 2)), -1),
        )
        lo = (self.lw.clamp(min=0) * xl + self.lw.clamp(max=0) * xh).sum(-1) + self.lb
        hi = (self.uw.clamp(min=0) * xh + self.uw.clamp(max=0) * xl).sum(-1) + self.ub
        return lo, hi


def _compose(src: _Lin, a_l, b_l, a_u, b_u) -> _Lin:
    """The forms of ``f(t)`` from ``a_l t + b_l <= f(t) <= a_u t + b_u`` and the forms of ``t``:
    a slope's sign decides which form of ``t`` it takes (``a t >= a U(x)`` where ``a < 0``)."""
    lp, ln, up, un = a_l.clamp(min=0), a_l.clamp(max=0), a_u.clamp(min=0), a_u.clamp(max=0)
    return _Lin(
        lp.unsqueeze(-1) * src.lw + ln.unsqueeze(-1) * src.uw,
        lp * src.lb + ln * src.ub + b_l,
        up.unsqueeze(-1) * src.uw + un.unsqueeze(-1) * src.lw,
        up * src.ub + un * src.lb + b_u,
    )


def _join(state, node, lin) -> _Lin:
    """``cat`` / ``stack`` of variable and constant operands: the forms of each operand joined
    along the same dimension (a constant ``c`` has forms ``0 x + c``)."""
    parts, dim = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    n_in = state.x_lo[0].numel()
    forms = []
    for a in parts:
        if isinstance(a, fx.Node) and a in lin:
            forms.append(lin[a])
        else:
            c = state.const[a] if isinstance(a, fx.Node) else torch.as_tensor(a)
            c = c.to(state.x_lo.dtype, device=state.x_lo.device)
            z = torch.zeros(*c.shape, n_in, dtype=c.dtype, device=c.device)
            forms.append(_Lin(z, c, z, c))
    ndim = forms[0].lb.dim() + (1 if node.target is aten.stack.default else 0)
    d = dim % ndim  # the forms' coefficients carry one more (trailing) dimension
    op = torch.cat if node.target is aten.cat.default else torch.stack
    return _Lin(*(op([getattr(f, k) for f in forms], d) for k in ("lw", "lb", "uw", "ub")))


def _scale(src: _Lin, k: float) -> _Lin:
    """The forms of ``k * t`` for a real ``k`` (a negative one swaps lower and upper)."""
    if k >= 0:
        return _Lin(src.lw * k, src.lb * k, src.uw * k, src.ub * k)
    return _Lin(src.uw * k, src.ub * k, src.lw * k, src.lb * k)


def _apply_lin(f, w: torch.Tensor) -> torch.Tensor:
    """Apply a linear map ``f`` (on node-shaped tensors with batch) to each input column."""
    return vmap(f, in_dims=-1, out_dims=-1)(w)


MAXPOOL_RELAXATIONS = ("deeppoly", "tight")


def forward_bounds(
    graph: CapturedGraph,
    x_lo: torch.Tensor,
    x_hi: torch.Tensor,
    maxpool: str = "deeppoly",
    C: torch.Tensor | None = None,
    nodes_out: dict | None = None,
):
    """Bounds ``(lo, hi)`` of the output node (shape of the output) by forward propagation; with
    ``C`` (``(S, n_out)`` or ``(B, S, n_out)``), bounds ``(B, S)`` of ``C @ y``, with ``C``
    applied to the output's linear forms before they are concretised (as if ``C`` were a last
    layer of the graph), intersected with the interval bound of ``C @ y`` over the output box.

    ``maxpool``: ``"deeppoly"`` (lower ``y >= x_p``, upper ``max u`` unless the pivot ``p``
    dominates) or ``"tight"`` (also the pivot-difference upper bound of :func:`_pivot_upper`,
    chosen per pooled entry where its concretised upper bound is smaller; never looser there).
    ``nodes_out``: a dict that receives every node's bounds the pass concretised (the inputs of
    its nonlinearities), by node name: sound intermediate bounds for a backward pass."""
    if maxpool not in MAXPOOL_RELAXATIONS:
        raise ValueError(f"maxpool must be one of {MAXPOOL_RELAXATIONS}, got {maxpool!r}")
    state = prepare(graph, x_lo, x_hi, refine=False)
    nodes = list(graph.gm.graph.nodes)
    x_node = graph.input_node
    b = x_lo.shape[0]
    n_in = x_lo[0].numel()
    eye = torch.eye(n_in, dtype=x_lo.dtype, device=x_lo.device)
    eye = eye.reshape(1, *x_lo.shape[1:], n_in).expand(b, *x_lo.shape[1:], n_in)
    zero = torch.zeros_like(x_lo)
    lin: dict = {x_node: _Lin(eye, zero, eye, zero)}
    bounds: dict = {x_node: (x_lo, x_hi)}

    def node_bounds(n):
        if n not in bounds:
            lo, hi = lin[n].concretize(x_lo, x_hi)
            if n in state.lower:
                lo, hi = intersect(lo, hi, state.lower[n], state.upper[n])
            bounds[n] = (lo, hi)
        return bounds[n]

    out_node = None
    for n in nodes:
        deadline.check("forward linear bounds")
        if n.op == "output":
            out_node = n.args[0]
            break
        if n.op == "placeholder" or n in state.const:
            continue
        target = n.target
        if target is operator.getitem:
            parent, idx = n.args
            if parent.target in TUPLE_OPS and idx == 0:
                n_eff, target = parent, parent.target
            else:
                continue
        else:
            n_eff = n
        rule = FORWARD.get(target)
        var = [a for a in _flat_nodes(n_eff.args) if a not in state.const]
        two_vars = (target in JOINT or target in PRODUCT_OPS) and len(set(var)) != 1
        var_divisor = target is aten.div.Tensor and any(a in var for a in n_eff.args[1:])
        if rule is None or two_vars or var_divisor or any(v not in lin for v in var):
            if n not in state.lower:
                continue  # not a float tensor (a mask, an index): its readers take their interval bounds
            # the node's interval bounds as constant forms: sound for any op
            lo_n, hi_n = state.lower[n], state.upper[n]
            zw = torch.zeros(*lo_n.shape, n_in, dtype=lo_n.dtype, device=lo_n.device)
            lin[n] = _Lin(zw, lo_n, zw, hi_n)
            continue
        lin[n] = rule(_Ctx(state, lin, node_bounds, maxpool == "tight"), n_eff, var)
    lo, hi = node_bounds(out_node)
    if nodes_out is not None:  # every node's bounds that the pass concretised, by name
        nodes_out.update({n.name: b for n, b in bounds.items() if n is not x_node})
    if C is None:
        return lo, hi
    from boundflow.domains.interval.domain import spec_bounds

    f = lin[out_node]
    Cb = torch.as_tensor(C, dtype=x_lo.dtype)
    Cb = (Cb.unsqueeze(0) if Cb.dim() == 2 else Cb).expand(b, -1, -1)
    if Cb.shape[-1] != lo[0].numel():
        raise ValueError(f"C must have shape (S, {lo[0].numel()}) or ({b}, S, {lo[0].numel()}), got {tuple(C.shape)}")
    cp, cn = Cb.clamp(min=0), Cb.clamp(max=0)

    def flat(t, w: bool):
        return t.reshape(b, -1, n_in) if w else t.reshape(b, -1)

    spec = _Lin(
        cp @ flat(f.lw, True) + cn @ flat(f.uw, True),
        (cp @ flat(f.lb, False).unsqueeze(-1) + cn @ flat(f.ub, False).unsqueeze(-1)).squeeze(-1),
        cp @ flat(f.uw, True) + cn @ flat(f.lw, True),
        (cp @ flat(f.ub, False).unsqueeze(-1) + cn @ flat(f.lb, False).unsqueeze(-1)).squeeze(-1),
    )
    m_lo, m_hi = spec.concretize(x_lo, x_hi)
    return intersect(m_lo, m_hi, *spec_bounds(lo, hi, Cb))


_SIGNED_LINEAR = (AFFINE_OPS - POSITIVE_LINEAR) | {
    aten.mul.Tensor,
    aten.mul.Scalar,
    aten.div.Tensor,
    aten.div.Scalar,
    aten.native_batch_norm.default,
}


def _split_linear(state, node, target, v):
    """``(f, positive, offset)``: the op's linear part ``f(t) = op(t) - op(0)`` in its one
    non-constant operand ``v``, whether ``f`` has non-negative coefficients (shape ops, average
    pools, sums), and ``op(0)``."""
    if target not in POSITIVE_LINEAR and target not in _SIGNED_LINEAR:
        raise UnsupportedOperation(f"forward linear bounds: no rule for {target} (node {node.name})")
    if target in (aten.div.Tensor, aten.div.Scalar) and any(a is v for a in node.args[1:]):
        raise UnsupportedOperation(f"forward linear bounds: division by a variable ({node.name}) is not affine")

    def value(a, t):
        if isinstance(a, fx.Node):
            return t if a is v else state.const[a]
        if isinstance(a, (list, tuple)):
            return type(a)(value(b, t) for b in a)
        return a

    def call(t):
        out = target(*value(list(node.args), t), **{k: value(w, t) for k, w in node.kwargs.items()})
        return out[0] if target in TUPLE_OPS else out

    c = call(torch.zeros(_shape(state, v), dtype=state.x_lo.dtype, device=state.x_lo.device))
    return (lambda t: call(t) - c), target in POSITIVE_LINEAR, c


# products whose Jacobian entries are each one entry of the constant operand (convolutions,
# matrix products, elementwise scaling): the Jacobian's positive part is the same op with the
# constant's positive part
_SIGN_SPLIT = {
    aten.convolution.default: (0, 1),
    aten.addmm.default: (1, 2),
    aten.mm.default: (0, 1),
    aten.bmm.default: (0, 1),
    aten.mv.default: (0, 1),
    aten.mul.Tensor: (0, 1),
}


def _sign_split(state, node, target, v):
    """``(f_pos, f_neg)``: the op's linear part in ``v`` with the constant operand replaced by its
    positive and by its negative part, or ``None`` when the op has no such form here."""
    slots = _SIGN_SPLIT.get(target)
    if slots is None or not any(node.args[i] is v for i in slots if i < len(node.args)):
        return None
    others = [i for i in slots if i < len(node.args) and node.args[i] is not v]
    if len(others) != 1 or not isinstance(node.args[others[0]], fx.Node):
        return None
    w = state.const[node.args[others[0]]]

    def make(part):
        def f(t):
            args = [
                t if a is v else (part if i == others[0] else (state.const[a] if isinstance(a, fx.Node) else a))
                for i, a in enumerate(node.args)
            ]
            if target is aten.convolution.default:
                args[2] = None  # bias: part of the offset
            if target is aten.addmm.default:
                args[0] = torch.zeros_like(args[0])
            return target(*args)

        return f

    return make(w.clamp(min=0)), make(w.clamp(max=0))


# the most entries of a dense Jacobian that a signed linear map without a sign split may build
# (8 bytes each): beyond, the node keeps its interval bounds
DENSE_JACOBIAN_MAX = 2**25


def _affine(state, node, target, v, lin):
    f, positive, c = _split_linear(state, node, target, v)
    src = lin[v]
    if positive:  # non-negative linear map: lower to lower, upper to upper
        return _Lin(_apply_lin(f, src.lw), f(src.lb) + c, _apply_lin(f, src.uw), f(src.ub) + c)
    split = _sign_split(state, node, target, v)
    if split is not None:  # J = J+ + J-: lower = J+ L + J- U, upper = J+ U + J- L
        fp, fn = split
        return _Lin(
            _apply_lin(fp, src.lw) + _apply_lin(fn, src.uw),
            fp(src.lb) + fn(src.ub) + c,
            _apply_lin(fp, src.uw) + _apply_lin(fn, src.lw),
            fp(src.ub) + fn(src.lb) + c,
        )
    # signed linear map J: lower = J+ L + J- U; J materialised as a dense per-sample matrix from
    # its action on the unit vectors (fine for the small inputs forward mode is meant for)
    shape_in = _shape(state, v)
    n = 1
    for s_ in shape_in[1:]:
        n *= s_
    # the node whose bounds the interval pass holds: the op's, or for a tuple op its first output's
    held = (
        node
        if node in state.lower
        else next((u for u in node.users if u.target is operator.getitem and u.args[1] == 0 and u in state.lower), None)
    )
    if n * c.numel() > DENSE_JACOBIAN_MAX and held is not None:
        # the dense Jacobian would not fit (a wide batch norm or transposed convolution): the
        # node's interval bounds as constant forms instead (sound for any op)
        lo_n, hi_n = state.lower[held], state.upper[held]
        zw = torch.zeros(*lo_n.shape, src.lw.shape[-1], dtype=lo_n.dtype, device=lo_n.device)
        return _Lin(zw, lo_n, zw, hi_n)
    basis = torch.eye(n, dtype=state.x_lo.dtype, device=state.x_lo.device)
    basis = basis.reshape(n, 1, *shape_in[1:]).expand(n, shape_in[0], *shape_in[1:])
    cols = vmap(f)(basis)  # (n, B, *out): column j = J e_j
    jac = cols.movedim(0, -1).reshape(shape_in[0], -1, n)  # (B, out, in)
    jp, jn = jac.clamp(min=0), jac.clamp(max=0)
    b = shape_in[0]

    def mat(w):  # (B, *in, n_in) -> (B, in, n_in)
        return w.reshape(b, n, -1)

    out_shape = c.shape
    lw = (jp @ mat(src.lw) + jn @ mat(src.uw)).reshape(*out_shape, -1)
    uw = (jp @ mat(src.uw) + jn @ mat(src.lw)).reshape(*out_shape, -1)
    lb = (jp @ src.lb.reshape(b, n, 1) + jn @ src.ub.reshape(b, n, 1)).reshape(out_shape) + c
    ub = (jp @ src.ub.reshape(b, n, 1) + jn @ src.lb.reshape(b, n, 1)).reshape(out_shape) + c
    return _Lin(lw, lb, uw, ub)


def _maxpool(state, node, lin, node_bounds, tight: bool = False):
    """DeepPoly max pooling on forward linear forms; with ``tight``, the upper form is replaced
    by the pivot-difference bound wherever that is smaller after concretisation."""
    inp = node.args[0]
    l, u = node_bounds(inp)
    args = list(node.args[1:])
    ml, idx, mu, exact = deeppoly_pool(l, u, args)
    src = lin[inp]
    spatial = l.dim()  # (B, C, H, W): forms carry one more trailing dim (n_in)

    def gather(t):  # node-shaped (B, C, H, W[, n_in]) -> pooled positions of argmax l
        extra = t.dim() - spatial
        flat = t.flatten(2, 3)
        index = idx.flatten(-2)
        if extra:
            index = index.unsqueeze(-1).expand(*index.shape, t.shape[-1])
        g = flat.gather(2, index)
        return g.reshape(*ml.shape, *t.shape[spatial:])

    lw, lb = gather(src.lw), gather(src.lb)
    uw_sel, ub_sel = gather(src.uw), gather(src.ub)
    uw = torch.where(exact.unsqueeze(-1), uw_sel, torch.zeros_like(uw_sel))
    ub = torch.where(exact, ub_sel, mu)
    windows = _windows(l.shape, args, l.device) if tight else None
    if windows is not None:
        p_uw, p_ub = _pivot_upper(state, src, idx, l, u, windows, (lw, lb, uw_sel, ub_sel))
        p_uw, p_ub = p_uw.reshape(uw.shape), p_ub.reshape(ub.shape)
        # choose per entry the form that is lower on average over the input box (its value at
        # the centre), like CROWN's area-based slope choice; both are sound
        centre = ((state.x_lo + state.x_hi) / 2).reshape(state.x_lo.shape[0], *([1] * (uw.dim() - 2)), -1)
        better = (p_uw * centre).sum(-1) + p_ub < (uw * centre).sum(-1) + ub
        # unbounded differences (infinite intermediate bounds) give no usable line: keep DeepPoly's
        better = better & torch.isfinite(p_ub) & torch.isfinite(p_uw).all(-1)
        uw = torch.where(better.unsqueeze(-1), p_uw, uw)
        ub = torch.where(better, p_ub, ub)
    return _Lin(lw, lb, uw, ub)


def _windows(shape, args, device):
    """``(index, valid)``, each ``(O, K)``: the flat input position of every entry of every
    pooling window (``O`` output positions, ``K`` window entries; torch's geometry, padding
    and ``ceil_mode`` included) and whether it is a real entry (not padding)."""
    win = pool_index_windows(shape, args, device)
    win = win.reshape(-1, win.shape[-1])
    return win.clamp(min=0), win >= 0


def _pivot_upper(state, src, idx, l, u, windows, pivot):
    """Upper form of ``y = max_i x_i`` over each window from the pivot ``p`` (argmax of the lower
    bounds): ``y = x_p + max_i (x_i - x_p) <= x_p + sum_i relu(d_i)`` with ``d_i = x_i - x_p``
    bounded *symbolically* (both forms are functions of the same input, so shared terms cancel)
    and each ``relu(d_i)`` replaced by its triangle upper line ``lam_i (d_i - dl_i)``.  Sound
    for every input in the box: each step is an upper bound.  Returns ``(uw, ub)`` flattened
    to ``(B, C, O[, n_in])``."""
    index, valid = windows
    o, k = index.shape
    b, c = l.shape[:2]
    p_lw, p_lb, p_uw, p_ub = (t.flatten(2, 3) if t.dim() == l.dim() + 1 else t.flatten(2) for t in pivot)
    pidx = idx.flatten(2)  # (B, C, O)

    def win(t):  # (B, C, H, W[, n]) -> (B, C, O, K[, n])
        flat = t.flatten(2, 3)
        g = flat[:, :, index.reshape(-1)]
        return g.reshape(b, c, o, k, *t.shape[l.dim() :])

    # d_i = x_i - x_p: lower form L_i - U_p, upper form U_i - L_p
    d_lo_w = win(src.lw) - p_uw.unsqueeze(3)
    d_lo_b = win(src.lb) - p_ub.unsqueeze(3)
    d_hi_w = win(src.uw) - p_lw.unsqueeze(3)
    d_hi_b = win(src.ub) - p_lb.unsqueeze(3)
    dl, _ = _Lin(d_lo_w, d_lo_b, d_lo_w, d_lo_b).concretize(state.x_lo, state.x_hi)
    _, du = _Lin(d_hi_w, d_hi_b, d_hi_w, d_hi_b).concretize(state.x_lo, state.x_hi)
    # interval fallback: d_i in [l_i - u_p, u_i - l_p]
    lp = l.flatten(2).gather(2, pidx).unsqueeze(3)
    up = u.flatten(2).gather(2, pidx).unsqueeze(3)
    dl = torch.maximum(dl, win(l) - up)
    du = torch.minimum(du, win(u) - lp)
    is_pivot = index.reshape(1, 1, o, k) == pidx.unsqueeze(3)
    active = valid.reshape(1, 1, o, k) & ~is_pivot & (du > 0)
    stable = dl >= 0
    lam = torch.where(stable, torch.ones_like(du), du / (du - dl).clamp(min=torch.finfo(du.dtype).tiny))
    lam = torch.where(active, lam, torch.zeros_like(lam))
    const = torch.where(active & ~stable, -lam * dl, torch.zeros_like(dl)).sum(3)  # (B, C, O)
    a_p = 1 - lam.sum(3)  # coefficient of x_p
    uw = (lam.unsqueeze(-1) * win(src.uw)).sum(3)
    ub = (lam * win(src.ub)).sum(3) + const
    pos = a_p >= 0
    uw = uw + a_p.unsqueeze(-1) * torch.where(pos.unsqueeze(-1), p_uw, p_lw)
    ub = ub + a_p * torch.where(pos, p_ub, p_lb)
    return uw, ub


@dataclass
class _Ctx:
    """What a forward rule reads: the run's state, the forms so far, node bounds on demand."""

    state: object
    lin: dict
    node_bounds: object
    tight_pool: bool


def _relaxation_fwd(ctx: _Ctx, node, var) -> _Lin:
    inp = node.args[0]
    l, u = ctx.node_bounds(inp)
    return _compose(ctx.lin[inp], *RELAXATIONS[node.target](node, l, u))


def _maxpool_fwd(ctx: _Ctx, node, var) -> _Lin:
    return _maxpool(ctx.state, node, ctx.lin, ctx.node_bounds, ctx.tight_pool)


def _affine_fwd(ctx: _Ctx, node, var) -> _Lin:
    if len(var) != 1:
        raise UnsupportedOperation(
            f"forward linear bounds: {node.target} of {len(var)} variable operands (node {node.name})"
        )
    return _affine(ctx.state, node, node.target, var[0], ctx.lin)


def _add_fwd(ctx: _Ctx, node, var) -> _Lin:
    """``a + alpha * c`` (``a - alpha * c``) of two variables: the second operand's forms scaled
    with a sign split; one variable: the affine rule."""
    if not (len(var) == 2 and len(node.args) == 2):
        return _affine_fwd(ctx, node, var)
    a, c = (ctx.lin[v] for v in node.args)
    k = float(node.kwargs.get("alpha", 1))
    c = _scale(c, -k if node.target is aten.sub.Tensor else k)
    return _Lin(a.lw + c.lw, a.lb + c.lb, a.uw + c.uw, a.ub + c.ub)


def _join_fwd(ctx: _Ctx, node, var) -> _Lin:
    return _join(ctx.state, node, ctx.lin)


# ATen op -> forward rule ``(ctx, node, variable operands) -> forms of the node``
FORWARD: dict = {op: _affine_fwd for op in POSITIVE_LINEAR | _SIGNED_LINEAR}
FORWARD.update({op: _relaxation_fwd for op in RELAXATIONS})
FORWARD[aten.max_pool2d_with_indices.default] = _maxpool_fwd
FORWARD.update({aten.add.Tensor: _add_fwd, aten.sub.Tensor: _add_fwd})
FORWARD.update({aten.cat.default: _join_fwd, aten.stack.default: _join_fwd})
