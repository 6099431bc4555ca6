"""alpha-CROWN: CROWN with the relaxations' free parameters optimised: the lower slopes of
unstable ReLU/LeakyReLU neurons, the tangent points of sigmoid/tanh and of the convex/concave
exp, log and softplus, and the max-pool lower lines' weights."""

from __future__ import annotations

import time

import torch

from boundflow.domains.linear.backward import backsub
from boundflow.domains.linear.crown import crown, spec_coefficients
from boundflow.domains.linear.maxpool import maxpool_alpha_init
from boundflow.domains.linear.relaxations import RELAXATIONS, S_SHAPED, TANGENT_POINT, s_shaped_alpha_init
from boundflow.domains.linear.state import BoundState, _shape, ordered

__all__ = ["alpha_crown"]


def alpha_crown(graph, x_lo, x_hi, C=None, iterations: int = 20, lr: float = 0.1, deadline: float | None = None):
    """CROWN with the lower slopes of unstable ReLU/LeakyReLU neurons and the tangent points of
    sigmoid/tanh (:func:`~boundflow.domains.linear.relaxations.s_shaped`), of exp/log/softplus
    (:func:`~boundflow.domains.linear.relaxations.convex`) and the weights of
    the max-pool lower lines (:func:`~boundflow.domains.linear.maxpool.maxpool_back`) optimised by projected
    gradient ascent (Adam) on the final bound, separately for the lower and the upper bound.
    Every iterate is a sound bound, so the best per entry is kept and stopping early is safe
    (``deadline``, a ``time.monotonic()`` reading, stops the iterations); the result is never
    looser than CROWN (iteration 0 uses CROWN's slopes)."""
    lb0, ub0, state = crown(graph, x_lo, x_hi, C)
    out_node = next(n for n in graph.gm.graph.nodes if n.op == "output").args[0]
    relu_ops = (torch.ops.aten.relu.default, torch.ops.aten.leaky_relu.default)
    free = [
        n
        for n in graph.gm.graph.nodes
        if n.op == "call_function"
        and (
            (n.target in RELAXATIONS and (n.target in relu_ops or n.target in S_SHAPED or n.target in TANGENT_POINT))
            or n.target is torch.ops.aten.max_pool2d_with_indices.default
        )
    ]
    if not free:
        return lb0, ub0
    best_lb, best_ub = lb0.clone(), ub0.clone()
    for sense in ("lower", "upper"):
        alphas = {}
        for r in free:
            l, u = state.lower[r.args[0]], state.upper[r.args[0]]
            if r.target is torch.ops.aten.max_pool2d_with_indices.default:  # window weights, DeepPoly's first
                a0 = maxpool_alpha_init(l, list(r.args[1:]))
            elif r.target in S_SHAPED:  # tangent points, starting at CROWN's
                a0 = s_shaped_alpha_init(*S_SHAPED[r.target], l, u)
            elif r.target in TANGENT_POINT:  # exp / log / softplus: the midpoint first
                a0 = torch.full_like(l, 0.5)
            else:  # ReLU lower slopes, starting at CROWN's
                a0 = (u >= -l).to(l.dtype)
            alphas[(r, out_node)] = a0.clone().requires_grad_(True)
        state.alpha = alphas
        opt = torch.optim.Adam(list(alphas.values()), lr=lr)
        for _ in range(iterations):
            if deadline is not None and time.monotonic() > deadline:
                break
            lb, ub = _final(state, graph, out_node, x_lo, C)
            with torch.no_grad():
                best_lb = torch.maximum(best_lb, lb) if sense == "lower" else best_lb
                best_ub = torch.minimum(best_ub, ub) if sense == "upper" else best_ub
            loss = -lb.sum() if sense == "lower" else ub.sum()
            if not loss.requires_grad:  # no unstable neuron: nothing to optimise
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for a in alphas.values():
                    a.clamp_(0, 1)
        with torch.no_grad():
            lb, ub = _final(state, graph, out_node, x_lo, C)
            best_lb = torch.maximum(best_lb, lb) if sense == "lower" else best_lb
            best_ub = torch.minimum(best_ub, ub) if sense == "upper" else best_ub
    state.alpha = {}
    return ordered(best_lb, best_ub)


def _final(state: BoundState, graph, out_node, x_lo, C):
    A, _ = spec_coefficients(C, _shape(state, out_node), x_lo.dtype, x_lo.device)
    lb, ub = backsub(state, out_node, A, A)
    return lb.transpose(0, 1), ub.transpose(0, 1)
