"""alpha-CROWN: CROWN with the relaxations' free parameters optimised: the lower slopes of
unstable ReLU/LeakyReLU neurons, the tangent points of sigmoid/tanh and of the convex/concave
exp, log and softplus, and the max-pool lower lines' weights; with split constraints, also
beta-CROWN's multipliers of the constraints (:mod:`boundflow.domains.linear.beta`)."""

from __future__ import annotations

import math
import time

import torch

from boundflow import deadline as deadlines
from boundflow.domains.linear.backward import backsub
from boundflow.domains.linear.beta import beta_terms, init_betas, split_constraints
from boundflow.domains.linear.crown import crown, prepare, spec_coefficients
from boundflow.domains.linear.maxpool import maxpool_alpha_init
from boundflow.domains.linear.relaxations import RELAXATIONS, S_SHAPED, TANGENT_POINT, s_shaped_alpha_init
from boundflow.domains.linear.state import BoundState, _shape, ordered

__all__ = ["alpha_crown", "optimise_intermediate"]


def alpha_crown(
    graph,
    x_lo,
    x_hi,
    C=None,
    iterations: int = 20,
    lr: float = 0.1,
    deadline: float | None = None,
    *,
    splits: dict | None = None,
    sides: tuple[str, ...] = ("lower", "upper"),
    lr_beta: float = 0.05,
    return_state: bool = False,
    warm: dict | None = None,
    intermediate: int = 0,
    intermediate_share: float = 1.0,
):
    """CROWN with the lower slopes of unstable ReLU/LeakyReLU neurons and the tangent points of
    sigmoid/tanh (:func:`~boundflow.domains.linear.relaxations.s_shaped`), of exp/log/softplus
    (:func:`~boundflow.domains.linear.relaxations.convex`) and the weights of
    the max-pool lower lines (:func:`~boundflow.domains.linear.maxpool.maxpool_back`) optimised by projected
    gradient ascent (Adam) on the final bound, separately for the lower and the upper bound.
    Every iterate is a sound bound, so the best per entry is kept and stopping early is safe
    (``deadline``, a ``time.monotonic()`` reading, or the thread's
    :func:`boundflow.deadline.within`, stops the iterations); the result is never looser than
    CROWN (iteration 0 uses CROWN's slopes).

    ``splits`` (node name -> ``(lo, hi)`` that hold on each sample's sub-domain, as for
    :func:`~boundflow.domains.linear.crown.prepare`): beta-CROWN; the constraints are
    intersected into the intermediate bounds and added to the objective with multipliers
    optimised alongside the slopes (learning rate ``lr_beta``; sound for every multiplier).
    ``sides``: which bounds to optimise (the other keeps CROWN's).  ``return_state``: also
    return the :class:`~boundflow.domains.linear.state.BoundState` (intermediate bounds,
    empty sub-domains; after a lower-bound pass, ``state.params`` holds its last slopes and
    multipliers by node name).  ``warm``: such ``params`` (batch-first, this batch) to start the
    lower-bound pass from instead of CROWN's slopes and zero multipliers (branch and bound
    passes a parent's to its children; any value is sound, entries whose shape does not match
    are ignored).  ``intermediate``: first tighten every ReLU input's bounds by that many
    iterations of :func:`optimise_intermediate`, within ``intermediate_share`` of the time left
    to the deadline (if there is one)."""
    state = prepare(graph, x_lo, x_hi, overrides=splits) if splits or intermediate else None
    if intermediate:
        stop0 = min(d for d in (deadline, deadlines.current(), float("inf")) if d is not None)
        if stop0 < float("inf"):
            now = time.monotonic()
            stop0 = now + intermediate_share * max(0.0, stop0 - now)
        optimise_intermediate(state, iterations=intermediate, lr=lr, stop=stop0)
    lb0, ub0, state = crown(graph, x_lo, x_hi, C, state=state)
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
    constraints = split_constraints(state, splits)
    if not free and not constraints:
        return (lb0, ub0, state) if return_state else (lb0, ub0)
    stop = min(d for d in (deadline, deadlines.current(), float("inf")) if d is not None)
    n_specs = spec_coefficients(C, _shape(state, out_node), x_lo.dtype, x_lo.device)[0].shape[0]
    best_lb, best_ub = lb0.clone(), ub0.clone()
    for sense in sides:
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
            w = (warm or {}).get("alpha", {}).get(r.name) if sense == "lower" else None
            if w is not None and tuple(w.shape) == tuple(a0.shape):
                a0 = w.to(a0).clamp(0, 1)
            alphas[(r, out_node)] = a0.clone().requires_grad_(True)
        state.alpha = alphas
        betas = init_betas(constraints, n_specs)
        if sense == "lower" and warm:
            with torch.no_grad():
                for c, b in zip(constraints, betas, strict=True):
                    w = warm.get("beta", {}).get(c.node.name)
                    if w is not None and tuple(w.shape) == tuple(b.shape):
                        b.copy_(w.to(b.dtype).clamp(min=0))
        groups = [{"params": list(alphas.values()), "lr": lr}] if alphas else []
        if betas:
            groups.append({"params": betas, "lr": lr_beta})
        opt = torch.optim.Adam(groups)
        # the lower pass's upper result is never read: compute only the lower side
        state.lower_only = sense == "lower"
        for _ in range(iterations):
            if time.monotonic() > stop:
                break
            lb, ub = _final(state, graph, out_node, x_lo, C, constraints, betas, sense)
            with torch.no_grad():
                best_lb = torch.maximum(best_lb, lb) if sense == "lower" else best_lb
                best_ub = torch.minimum(best_ub, ub) if sense == "upper" else best_ub
            loss = -lb.sum() if sense == "lower" else ub.sum()
            if not loss.requires_grad:  # no unstable neuron and no constraint: nothing to optimise
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for a in alphas.values():
                    a.clamp_(0, 1)
                for b in betas:
                    b.clamp_(min=0)
        if sense == "lower":  # the slopes and multipliers a child sub-domain may start from
            state.params = {
                "alpha": {r.name: a.detach() for (r, _), a in alphas.items() if r.target in relu_ops},
                "beta": {c.node.name: b.detach() for c, b in zip(constraints, betas, strict=True)},
            }
        with torch.no_grad():
            lb, ub = _final(state, graph, out_node, x_lo, C, constraints, betas, sense)
            best_lb = torch.maximum(best_lb, lb) if sense == "lower" else best_lb
            best_ub = torch.minimum(best_ub, ub) if sense == "upper" else best_ub
    state.alpha = {}
    state.lower_only = False
    lb, ub = ordered(best_lb, best_ub)
    return (lb, ub, state) if return_state else (lb, ub)


def _final(state: BoundState, graph, out_node, x_lo, C, constraints=(), betas=(), sense="lower"):
    """The final bounds with the current slopes; with split constraints, the ``sense`` bound
    includes the multipliers' terms (the other side is then not a bound and is not used)."""
    A, _ = spec_coefficients(C, _shape(state, out_node), x_lo.dtype, x_lo.device)
    if not constraints:
        lb, ub = backsub(state, out_node, A, A)
        return lb.transpose(0, 1), ub.transpose(0, 1)
    extra, const = beta_terms(constraints, betas, sense)
    lb, ub = backsub(state, out_node, A, A, extra)
    if sense == "lower":
        lb = lb + const
    else:
        ub = ub + const
    return lb.transpose(0, 1), ub.transpose(0, 1)


# the most coefficient entries one chunk of intermediate rows may hold (rows x widest node)
INTERMEDIATE_CHUNK_ENTRIES = 2**22


def optimise_intermediate(state: BoundState, iterations: int = 10, lr: float = 0.1, stop: float = float("inf")) -> int:
    """Tighten the bounds of every ReLU/LeakyReLU input in ``state`` (in place, in topological
    order, so each node's optimisation sees the tightened bounds before it) by alpha-CROWN: per
    chunk of its unstable neurons and per side, the lower slopes of the ReLUs before it are
    optimised (one set per chunk and side, shared by the chunk's rows; Adam, ``lr``) on the sum
    of the chunk's bounds.  Every iterate is a sound bound, so the best per neuron is kept and
    intersected with the node's bounds: never looser than before.  Stops at ``stop`` (a
    ``time.monotonic()`` reading) with what it has.  Returns how many neurons' bounds were
    optimised."""
    relu_ops = (torch.ops.aten.relu.default, torch.ops.aten.leaky_relu.default)
    graph = state.graph
    relus = [n for n in graph.gm.graph.nodes if n.op == "call_function" and n.target in relu_ops]
    targets = list(dict.fromkeys(r.args[0] for r in relus if r.args[0] in state.lower))
    widest = max(math.prod(_shape(state, m)[1:]) for m in list(state.lower))
    chunk = max(1, INTERMEDIATE_CHUNK_ENTRIES // max(widest * state.x_lo.shape[0], 1))
    order = {n: i for i, n in enumerate(graph.gm.graph.nodes)}
    done = 0
    saved = state.alpha, state.lower_only
    try:
        for x in targets:
            before = [r for r in relus if order[r] < order[x] and r.args[0] in state.lower]
            l, u = state.lower[x], state.upper[x]
            b, shape = l.shape[0], tuple(l.shape[1:])
            n = math.prod(shape)
            sel = ((l < 0) & (u > 0)).reshape(b, n).any(0).nonzero().squeeze(1)
            if not before or not len(sel):
                continue
            lo, hi = l.reshape(b, n).clone(), u.reshape(b, n).clone()
            for s in range(0, len(sel), chunk):
                idx = sel[s : s + chunk]
                k = len(idx)
                eye = torch.zeros(k, n, dtype=l.dtype, device=l.device)
                eye[torch.arange(k, device=l.device), idx] = 1
                for sign in (1.0, -1.0):  # the lower bound, then the upper as -lower(-x)
                    if time.monotonic() > stop:
                        return done
                    A = (sign * eye).reshape(k, 1, *shape)
                    alphas = {}
                    for r in before:
                        rl, ru = state.lower[r.args[0]], state.upper[r.args[0]]
                        alphas[(r, x)] = (ru >= -rl).to(rl.dtype).requires_grad_(True)
                    state.alpha, state.lower_only = alphas, True
                    opt = torch.optim.Adam(list(alphas.values()), lr=lr)
                    best = torch.full((k, b), -math.inf, dtype=l.dtype, device=l.device)
                    for _ in range(iterations):
                        if time.monotonic() > stop:
                            break
                        lb, _ = backsub(state, x, A, A)
                        with torch.no_grad():
                            best = torch.maximum(best, lb)
                        if not lb.requires_grad:
                            break
                        opt.zero_grad()
                        (-lb.sum()).backward()
                        opt.step()
                        with torch.no_grad():
                            for a in alphas.values():
                                a.clamp_(0, 1)
                    with torch.no_grad():
                        if sign > 0:
                            lo[:, idx] = torch.maximum(lo[:, idx], best.T)
                        else:
                            hi[:, idx] = torch.minimum(hi[:, idx], -best.T)
                done += k
            state.lower[x], state.upper[x] = ordered(lo.reshape(b, *shape), hi.reshape(b, *shape))
    finally:
        state.alpha, state.lower_only = saved
    return done
