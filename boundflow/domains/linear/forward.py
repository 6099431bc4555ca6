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

import torch
from torch import fx
from torch.func import vmap

from boundflow.domains.linear.crown import (
    AFFINE_OPS,
    POSITIVE_LINEAR,
    TUPLE_OPS,
    _flat_nodes,
    _shape,
    deeppoly_pool,
    prepare,
)
from boundflow.domains.linear.relaxations import RELAXATIONS
from boundflow.errors import UnsupportedOperation
from boundflow.graph import CapturedGraph

aten = torch.ops.aten

__all__ = ["forward_bounds"]


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


def _apply_lin(f, w: torch.Tensor) -> torch.Tensor:
    """Apply a linear map ``f`` (on node-shaped tensors with batch) to each input column."""
    return vmap(f, in_dims=-1, out_dims=-1)(w)


def forward_bounds(graph: CapturedGraph, x_lo: torch.Tensor, x_hi: torch.Tensor):
    """Bounds ``(lo, hi)`` of the output node (shape of the output) by forward propagation."""
    state = prepare(graph, x_lo, x_hi, refine=False)
    nodes = list(graph.gm.graph.nodes)
    x_node = graph.input_node
    b = x_lo.shape[0]
    n_in = x_lo[0].numel()
    eye = torch.eye(n_in, dtype=x_lo.dtype).reshape(1, *x_lo.shape[1:], n_in).expand(b, *x_lo.shape[1:], n_in)
    zero = torch.zeros_like(x_lo)
    lin: dict = {x_node: _Lin(eye, zero, eye, zero)}
    bounds: dict = {x_node: (x_lo, x_hi)}

    def node_bounds(n):
        if n not in bounds:
            lo, hi = lin[n].concretize(x_lo, x_hi)
            if n in state.lower:
                lo, hi = torch.maximum(lo, state.lower[n]), torch.minimum(hi, state.upper[n])
            bounds[n] = (lo, hi)
        return bounds[n]

    out_node = None
    for n in nodes:
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
        var = [a for a in _flat_nodes(n_eff.args) if a not in state.const]
        if target in RELAXATIONS:
            inp = n_eff.args[0]
            l, u = node_bounds(inp)
            a_l, b_l, a_u, b_u = RELAXATIONS[target](n_eff, l, u)
            src = lin[inp]
            lin[n] = _Lin(
                a_l.unsqueeze(-1) * src.lw, a_l * src.lb + b_l, a_u.unsqueeze(-1) * src.uw, a_u * src.ub + b_u
            )
        elif target is aten.max_pool2d_with_indices.default:
            lin[n] = _maxpool(state, n_eff, lin, node_bounds)
        elif len(var) == 2 and target in (aten.add.Tensor, aten.sub.Tensor) and len(n_eff.args) == 2:
            a, c = (lin[v] for v in n_eff.args)
            if target is aten.add.Tensor:
                lin[n] = _Lin(a.lw + c.lw, a.lb + c.lb, a.uw + c.uw, a.ub + c.ub)
            else:
                lin[n] = _Lin(a.lw - c.uw, a.lb - c.ub, a.uw - c.lw, a.ub - c.lb)
        elif len(var) == 1:
            lin[n] = _affine(state, n_eff, target, var[0], lin)
        else:
            raise UnsupportedOperation(f"forward linear bounds: no rule for {target} (node {n.name})")
    lo, hi = node_bounds(out_node)
    return lo, hi


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

    c = call(torch.zeros(_shape(state, v), dtype=state.x_lo.dtype))
    return (lambda t: call(t) - c), target in POSITIVE_LINEAR, c


def _affine(state, node, target, v, lin):
    f, positive, c = _split_linear(state, node, target, v)
    src = lin[v]
    if positive:  # non-negative linear map: lower to lower, upper to upper
        return _Lin(_apply_lin(f, src.lw), f(src.lb) + c, _apply_lin(f, src.uw), f(src.ub) + c)
    # signed linear map J: lower = J+ L + J- U; J materialised as a dense per-sample matrix from
    # its action on the unit vectors (fine for the small inputs forward mode is meant for)
    shape_in = _shape(state, v)
    n = 1
    for s_ in shape_in[1:]:
        n *= s_
    basis = torch.eye(n, dtype=state.x_lo.dtype).reshape(n, 1, *shape_in[1:]).expand(n, shape_in[0], *shape_in[1:])
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


def _maxpool(state, node, lin, node_bounds):
    inp = node.args[0]
    l, u = node_bounds(inp)
    ml, idx, mu, exact = deeppoly_pool(l, u, list(node.args[1:]))
    src = lin[inp]

    def gather(t):  # node-shaped (B, C, H, W[, n_in]) -> pooled positions of argmax l
        extra = t.dim() - l.dim()
        flat = t.flatten(2, 3) if extra == 0 else t.flatten(2, 3)
        index = idx.flatten(-2)
        if extra:
            index = index.unsqueeze(-1).expand(*index.shape, t.shape[-1])
        g = flat.gather(2, index)
        return g.reshape(*ml.shape, *t.shape[l.dim() :])

    lw, lb = gather(src.lw), gather(src.lb)
    uw_sel, ub_sel = gather(src.uw), gather(src.ub)
    uw = torch.where(exact.unsqueeze(-1), uw_sel, torch.zeros_like(uw_sel))
    ub = torch.where(exact, ub_sel, mu)
    return _Lin(lw, lb, uw, ub)
