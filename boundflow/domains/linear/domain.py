"""``crown`` and ``alpha-crown`` behind the common Domain interface."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from boundflow.domains.linear.crown import BoundState, backsub, crown, intersect, ordered, prepare
from boundflow.errors import UnsupportedOperation
from boundflow.graph import capture
from boundflow.specs import Box

__all__ = ["CrownDomain", "AlphaCrownDomain", "ForwardDomain", "alpha_crown"]


def _exact_params(params: Mapping[str, torch.Tensor] | None) -> dict | None:
    """Parameters for capture; ``IntervalTensor`` entries become bounded weights."""
    return dict(params) if params else None


class CrownDomain:
    """CROWN: sound bounds, never looser than interval propagation per output."""

    name = "crown"

    def bounds(self, model: nn.Module, spec: Box, params=None, C=None):
        g = capture(model, (spec.lower + spec.upper) / 2, _exact_params(params))
        lb, ub, _ = crown(g, spec.lower, spec.upper, C)
        return _shape_out(lb, ub, g, spec, C)


def _shape_out(lb, ub, g, spec, C):
    if C is not None:
        return lb, ub
    out_val = next(n for n in g.gm.graph.nodes if n.op == "output").args[0].meta.get("val")
    shape = tuple(out_val.shape) if out_val is not None else lb.shape
    return lb.reshape(shape), ub.reshape(shape)


def alpha_crown(graph, x_lo, x_hi, C=None, iterations: int = 20, lr: float = 0.1, deadline: float | None = None):
    """CROWN with the lower slopes of unstable ReLU/LeakyReLU neurons optimised by projected
    gradient ascent (Adam) on the final bound, separately for the lower and the upper bound.
    Every iterate is a sound bound, so the best per entry is kept and stopping early is safe
    (``deadline``, a ``time.monotonic()`` reading, stops the iterations); the result is never
    looser than CROWN (iteration 0 uses CROWN's slopes)."""
    import time

    from boundflow.domains.linear.relaxations import RELAXATIONS

    lb0, ub0, state = crown(graph, x_lo, x_hi, C)
    out_node = next(n for n in graph.gm.graph.nodes if n.op == "output").args[0]
    relus = [
        n
        for n in graph.gm.graph.nodes
        if n.op == "call_function"
        and n.target in RELAXATIONS
        and n.target in (torch.ops.aten.relu.default, torch.ops.aten.leaky_relu.default)
    ]
    if not relus:
        return lb0, ub0
    best_lb, best_ub = lb0.clone(), ub0.clone()
    for sense in ("lower", "upper"):
        alphas = {}
        for r in relus:
            l, u = state.lower[r.args[0]], state.upper[r.args[0]]
            alphas[(r, out_node)] = (u >= -l).to(l.dtype).clone().requires_grad_(True)
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
    from boundflow.domains.linear.crown import _shape, spec_coefficients

    A, _ = spec_coefficients(C, _shape(state, out_node), x_lo.dtype)
    lb, ub = backsub(state, out_node, A, A)
    return lb.transpose(0, 1), ub.transpose(0, 1)


class AlphaCrownDomain:
    """alpha-CROWN: CROWN with optimised ReLU slopes; never looser than CROWN."""

    name = "alpha-crown"

    def __init__(self, iterations: int = 20, lr: float = 0.1):
        self.iterations, self.lr = iterations, lr

    def bounds(self, model: nn.Module, spec: Box, params=None, C=None):
        g = capture(model, (spec.lower + spec.upper) / 2, _exact_params(params))
        lb, ub = alpha_crown(g, spec.lower, spec.upper, C, self.iterations, self.lr)
        return _shape_out(lb, ub, g, spec, C)


_ = prepare


class ForwardDomain:
    """Forward-mode linear bounds (DeepPoly's forward pass); cheap for low-dimensional inputs.

    ``maxpool="tight"`` adds the pivot-difference upper bound for max pooling (see
    :func:`boundflow.domains.linear.forward.forward_bounds`) and intersects the result with the
    ``deeppoly`` run, so it is never looser than that; pass the instance as ``method`` to
    :func:`boundflow.compute_bounds`: ``compute_bounds(model, lo, hi, method=ForwardDomain("tight"))``."""

    name = "forward"

    def __init__(self, maxpool: str = "deeppoly"):
        from boundflow.domains.linear.forward import MAXPOOL_RELAXATIONS

        if maxpool not in MAXPOOL_RELAXATIONS:
            raise ValueError(f"maxpool must be one of {MAXPOOL_RELAXATIONS}, got {maxpool!r}")
        self.maxpool = maxpool

    def bounds(self, model: nn.Module, spec: Box, params=None, C=None):
        from boundflow.domains.interval.domain import spec_bounds
        from boundflow.domains.linear.forward import forward_bounds

        if params and any(getattr(t, "is_exact", lambda: True)() is False for t in params.values()):
            raise UnsupportedOperation("method='forward' does not support interval parameters yet; use 'crown'")
        g = capture(model, (spec.lower + spec.upper) / 2, _exact_params(params))
        lo, hi = forward_bounds(g, spec.lower, spec.upper, self.maxpool)
        if self.maxpool == "tight":
            # the per-channel choice of upper form is a heuristic, so intersect with DeepPoly's
            # run: both are sound, and the result is never looser than either
            lo_d, hi_d = forward_bounds(g, spec.lower, spec.upper, "deeppoly")
            if C is not None:
                (lo, hi), (lo_d, hi_d) = spec_bounds(lo, hi, C), spec_bounds(lo_d, hi_d, C)
                return intersect(lo, hi, lo_d, hi_d)
            lo, hi = intersect(lo, hi, lo_d, hi_d)
        if C is not None:
            return spec_bounds(lo, hi, C)
        return lo, hi
