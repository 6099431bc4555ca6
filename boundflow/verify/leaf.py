"""Exact leaves of branch and bound: one sub-domain decided by the mixed-integer program of the
one network encoder (:func:`boundflow.encode.network.margin_program`).

The program holds every node within its sound bounds on the sub-domain (the splits applied),
a big-M ReLU per unstable neuron and ``t >= m_s`` for every margin row.  ``unsat`` needs a
rigorous dual bound ``> 0`` of ``min t`` (:class:`solvers.backends.MilpSolver`: the LP's
rigorous bound, or HiGHS's MIP dual bound once
:meth:`~solvers.backends.MilpSolver.certify` has proved it with rigorous LP bounds on every leaf
of its own search); a solution with ``t <= 0`` is only a candidate, re-checked in onnxruntime
(``check``) before ``sat``.  Sub-domains whose splits contradict sound bounds are empty
(``unsat``); bounds that are not finite leave the leaf ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

__all__ = ["decide"]


def decide(
    graph,
    lower: torch.Tensor,
    upper: torch.Tensor,
    C: torch.Tensor,
    d: torch.Tensor | None,
    node_ranges: Mapping | None,
    deadline: float,
    time_limit: float,
    check: Callable[[torch.Tensor], object],
) -> tuple[str, object]:
    """``(status, witness)`` of one sub-domain of ``graph`` (captured at batch one) over the box
    ``[lower, upper]`` (shape ``(1, ...)``) with node ranges ``node_ranges`` (its splits); the
    margins are ``C y - d``.  ``check(x)`` gets a flat input and returns a witness or ``None``."""
    from boundflow.encode.network import EmptyDomain, margin_program
    from solvers.backends import make_solver

    left = min(time_limit, deadline - time.monotonic())
    if left <= 0.05:
        return "timeout", None
    try:
        p, x, t, _ = margin_program(graph, lower, upper, C, d, node_ranges)
    except EmptyDomain:
        return "unsat", None
    except ValueError:  # a bound that is not finite: no big-M encoding
        return "unknown", None
    left = min(time_limit, deadline - time.monotonic())
    if left <= 0.05:
        return "timeout", None
    solver = make_solver(p, "milp")
    c = np.zeros(p.n_vars)
    c[t] = 1.0
    out = solver.minimize(c, left, goal=0.0)  # only the sign of the minimum matters here
    if out.bound > 0:
        return "unsat", None
    # counterexample candidates: a point the rigorous search met below the goal, the LP's
    # optimum (a point of the network when no binary is left), the MIP's incumbent
    candidates = [solver.candidate, solver.lp_candidate]
    try:
        candidates.append(np.asarray(solver.mip.h.getSolution().col_value, dtype=np.float64))
    except Exception:
        pass
    for sol in candidates:
        if sol is not None and len(sol) == p.n_vars:
            w = check(torch.from_numpy(sol[x]))
            if w is not None:
                return "sat", w
    return ("unknown" if time.monotonic() < deadline else "timeout"), None
