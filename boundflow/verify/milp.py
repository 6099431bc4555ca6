"""Exact leaves of ReLU branch and bound: one sub-domain of a chain as a MILP (HiGHS).

Variables: the input box, every pre-activation ``z_i`` within its sound bounds (the sub-domain's,
splits applied), a big-M ReLU (:meth:`solvers.program.Program.relu`) per unstable neuron, and
``t >= m_s`` for every margin row.  The disjunct has a point in the sub-domain iff
``min t <= 0``; ``unsat`` needs a dual bound ``> 0`` (:class:`solvers.backends.MilpSolver`: the
LP's rigorous bound, or HiGHS's MIP dual bound once :meth:`~solvers.backends.MilpSolver.certify`
has proved it with rigorous LP bounds on every leaf of its own search).  A solution with
``t <= 0`` is only a candidate: it is re-checked in onnxruntime before ``sat``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from boundflow.verify.chain import Chain

__all__ = ["decide", "program"]


def program(chain: Chain, lower, upper, bounds):
    """The MILP of the chain over ``[lower, upper]`` with pre-activation ``bounds`` (one
    sub-domain: ``(l_i, u_i)`` of shape ``(n_i,)``); returns ``(program, x vars, t var)``."""
    from solvers.program import Program

    p = Program()
    x = p.var(lower.numpy(), upper.numpy())
    prev, cols = x, np.arange(len(x))  # variables of the previous layer's outputs, and their columns
    lo_a, hi_a = lower.numpy(), upper.numpy()
    last = len(chain.weights) - 1
    for k, (w, b) in enumerate(zip(chain.weights, chain.biases, strict=True)):
        wk, bk = w.numpy()[:, cols], b.numpy()
        if k < last:
            l, u = (t.numpy() for t in bounds[k])
        else:  # margins: interval bounds from the previous layer's box
            mid, rad = wk @ ((lo_a + hi_a) / 2) + bk, np.abs(wk) @ ((hi_a - lo_a) / 2)
            l, u = mid - rad, mid + rad
        z = p.var(np.minimum(l, u), np.maximum(l, u))
        p.affine_eq(z, [(prev, wk)] if len(prev) else [], bk)
        if k == last:
            t = int(p.var(float(l.max()), float(max(u.max(), l.max()))))
            n = len(z)
            # t - m_s >= 0 for every row s
            p.rows(
                np.r_[np.arange(n), np.arange(n)],
                np.r_[np.full(n, t), z],
                np.r_[np.ones(n), -np.ones(n)],
                np.zeros(n),
                np.full(n, np.inf),
            )
            return p, x, t
        # inactive neurons (u <= 0) output 0: their columns are dropped from the next layer
        cols = np.nonzero(u > 0)[0]
        prev = np.asarray(
            [int(z[j]) if l[j] >= 0 else p.relu(int(z[j]), float(l[j]), float(u[j]))[0] for j in cols.tolist()],
            dtype=np.int64,
        )
        lo_a, hi_a = np.clip(l[cols], 0, None), u[cols]
    raise AssertionError("unreachable")


def decide(chain: Chain, lower, upper, splits, bounds, deadline: float, time_limit: float, check):
    """``Outcome`` (from :mod:`boundflow.verify.bab`) of one sub-domain by the MILP."""
    from boundflow.verify.bab import Outcome
    from solvers.backends import make_solver

    left = min(time_limit, deadline - time.monotonic())
    if left <= 0.05:
        return Outcome("timeout")
    finite = bool(torch.isfinite(lower).all() and torch.isfinite(upper).all())
    if not finite or not all(bool(torch.isfinite(l).all() and torch.isfinite(u).all()) for l, u in bounds):
        return Outcome("unknown")  # a big-M encoding needs finite bounds
    p, x, t = program(chain, lower, upper, bounds)
    solver = make_solver(p, "milp")
    c = np.zeros(p.n_vars)
    c[t] = 1.0
    out = solver.minimize(c, left, goal=0.0)  # only the sign of the minimum matters here
    if out.bound > 0:
        return Outcome("unsat")
    # counterexample candidates: a point the rigorous search met below the goal, the MIP's incumbent
    candidates = [solver.candidate]
    try:
        candidates.append(np.asarray(solver.mip.h.getSolution().col_value, dtype=np.float64))
    except Exception:
        pass
    for sol in candidates:
        if sol is not None and len(sol) == p.n_vars:
            w = check(torch.from_numpy(sol[x]))
            if w is not None:
                return Outcome("sat", w)
    return Outcome("unknown" if time.monotonic() < deadline else "timeout")
