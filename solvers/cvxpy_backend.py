"""cvxpy back end: the same programs as a cvxpy problem, for convex relaxations an LP solver
alone cannot express (the SDP relaxation builds on it) and as an independent check.

Why the bound is sound:

* ``lp``: solved by an interior-point solver (Clarabel by default); its duals are approximate,
  but :func:`solvers.backends.dual_bound` turns *any* multipliers into a rigorous lower bound
  (weak duality over the variable box, rounding padded), so inexact duals cost tightness only.
* ``milp``: the binaries integral, solved by HiGHS through cvxpy with the relative gap set;
  cvxpy reports the objective and a status, so only an ``optimal`` status contributes, through
  :func:`solvers.backends.gap_bound` (the gap the solver proved), never an unproven incumbent.
"""

from __future__ import annotations

import math
import time

import numpy as np

from solvers.backends import Outcome, dual_bound, gap_bound
from solvers.program import Program

__all__ = ["CvxpySolver"]

REL_GAP = 1e-4


class CvxpySolver:
    """``lp`` or ``milp`` through cvxpy (``lp_solver``, ``milp_solver``: cvxpy solver names)."""

    def __init__(self, program: Program, mode: str = "lp", lp_solver: str = "CLARABEL", milp_solver: str = "HIGHS"):
        import cvxpy as cp

        self.program, self.mode = program, mode
        self.lp_solver, self.milp_solver = lp_solver, milp_solver
        self.form = program.linear_form("all")
        n = program.n_vars
        self.c = cp.Parameter(n)
        self.integer = mode == "milp" and any(program.integer)
        rl, ru = self.form.row_lower, self.form.row_upper
        self.lo_rows, self.hi_rows = np.nonzero(np.isfinite(rl))[0], np.nonzero(np.isfinite(ru))[0]

        def build(integer: bool):
            x = cp.Variable(n)
            A = self.form.A
            cons = [x >= np.asarray(program.lower), x <= np.asarray(program.upper)]
            ints = np.nonzero(program.integer)[0]
            if integer and len(ints):  # integral entries tied to an integer variable
                cons.append(x[ints] == cp.Variable(len(ints), integer=True))
            row_cons = []
            if len(self.lo_rows):
                row_cons.append(A[self.lo_rows] @ x >= rl[self.lo_rows])
            if len(self.hi_rows):
                row_cons.append(A[self.hi_rows] @ x <= ru[self.hi_rows])
            return cp.Problem(cp.Minimize(self.c @ x), cons + row_cons), row_cons

        self.lp, self.lp_rows = build(False)
        self.mip = build(True)[0] if self.integer else None

    def _duals(self) -> np.ndarray | None:
        y = np.zeros(self.form.A.shape[0])
        k = 0
        for rows, sign in ((self.lo_rows, 1.0), (self.hi_rows, -1.0)):
            if len(rows):
                d = self.lp_rows[k].dual_value
                k += 1
                if d is None:
                    return None
                np.add.at(y, rows, sign * np.asarray(d, dtype=np.float64))
        return y

    def minimize(self, c: np.ndarray, time_limit: float | None = None) -> Outcome:
        t0 = time.perf_counter()
        c = np.asarray(c, dtype=np.float64)
        self.c.value = c
        y = None
        try:
            self.lp.solve(solver=self.lp_solver)
            status = str(self.lp.status)
            if status in ("optimal", "optimal_inaccurate"):
                y = self._duals()
        except Exception as e:  # a failed solve falls back to the interval bound
            status = f"failed: {e}"
        bound = dual_bound(self.program, c, self.form, y)
        status = "Optimal" if status == "optimal" else status
        if self.mip is not None:
            opts = {"mip_rel_gap": REL_GAP}
            if time_limit is not None:
                opts["time_limit"] = max(time_limit - (time.perf_counter() - t0), 0.05)
            try:
                self.mip.solve(solver=self.milp_solver, **opts)
                status = str(self.mip.status)
                obj = self.mip.value
                if status == "optimal" and obj is not None and math.isfinite(obj):
                    bound = max(bound, gap_bound(self.program, c, float(obj), REL_GAP))
                    status = "Optimal"
            except Exception as e:
                status = f"failed: {e}"
        return Outcome(bound, status, time.perf_counter() - t0)
