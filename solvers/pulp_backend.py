"""PuLP back end: the same programs through any solver PuLP drives — its bundled CBC by
default, Gurobi or CPLEX where a user has them — and export to LP/MPS files.

Why the bound is sound:

* ``lp``: the relaxation (binaries in [0, 1], products by McCormick envelopes) is solved with
  ``mip=False`` and the row duals PuLP reads back (``constraint.pi``) go through
  :func:`solvers.backends.dual_bound`, which is a rigorous lower bound for *any* multipliers
  (weak duality over the variable box, rounding padded); no duals: the interval bound.
* ``milp``: PuLP reports the incumbent's objective and a status, not the dual bound.  When the
  status is ``Optimal`` the solver has proved the gap within ``gapAbs`` or ``gapRel`` (both set
  here), so :func:`solvers.backends.gap_bound` is a proven dual bound; any other status (time
  limit, failure) contributes nothing beyond the LP bound.  As for HiGHS, the feasibility pad
  covers the solver's tolerances — an engineering margin.
"""

from __future__ import annotations

import math
import time

import numpy as np

from solvers.backends import Outcome, dual_bound, gap_bound
from solvers.program import Program

__all__ = ["PulpSolver", "to_pulp", "export"]

REL_GAP, ABS_GAP = 1e-4, 1e-9


def to_pulp(program: Program, integer: bool = True, form=None):
    """The program as a ``pulp.LpProblem`` (objective zero); returns ``(problem, variables,
    [(row, constraint)])``.  ``integer=False`` relaxes the binaries."""
    import pulp

    form = form if form is not None else program.linear_form("all")
    prob = pulp.LpProblem("boundflow", pulp.LpMinimize)
    xs = [
        prob.add_variable(f"x{i}", lowBound=lo, upBound=hi, cat="Integer" if (integ and integer) else "Continuous")
        for i, (lo, hi, integ) in enumerate(zip(program.lower, program.upper, program.integer))
    ]
    A = form.A.tocsr()
    cons = []
    for i in range(A.shape[0]):
        s, e = A.indptr[i], A.indptr[i + 1]
        expr = pulp.LpAffineExpression([(xs[j], float(v)) for j, v in zip(A.indices[s:e], A.data[s:e])])
        lo, hi = form.row_lower[i], form.row_upper[i]
        sides = [("e", expr == float(lo))] if lo == hi else []
        if lo != hi and np.isfinite(lo):
            sides.append(("l", expr >= float(lo)))
        if lo != hi and np.isfinite(hi):
            sides.append(("u", expr <= float(hi)))
        for tag, con in sides:
            name = f"r{i}{tag}"
            prob += con, name
            cons.append((i, name))
    return prob, xs, cons


def export(program: Program, path: str, c: np.ndarray | None = None) -> None:
    """Write the program (objective ``c``, default zero) to ``path``: ``.lp`` or ``.mps``."""
    import pulp

    prob, xs, _ = to_pulp(program)
    if c is not None:
        prob.setObjective(pulp.lpSum(float(c[j]) * xs[j] for j in np.nonzero(c)[0]))
    if str(path).endswith(".mps"):
        prob.writeMPS(str(path))
    elif str(path).endswith(".lp"):
        prob.writeLP(str(path))
    else:
        raise ValueError(f"export: {path}: the file name must end in .lp or .mps")


class PulpSolver:
    """``lp`` or ``milp`` through PuLP; ``solver``: a ``pulp`` solver factory taking ``(mip,
    time_limit)`` (default: the bundled CBC, single-threaded, silent)."""

    def __init__(self, program: Program, mode: str = "milp", solver=None):
        self.program, self.mode = program, mode
        self.form = program.linear_form("all")
        self.prob, self.xs, self.cons = to_pulp(program, integer=True, form=self.form)
        self.integer = mode == "milp" and any(program.integer)
        self._solver = solver or self._cbc

    @staticmethod
    def _cbc(mip: bool, time_limit: float | None):
        import warnings

        import pulp

        with warnings.catch_warnings():  # PuLP 3.3 marks its bundled CBC for removal in 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(
                mip=mip, msg=False, timeLimit=time_limit, gapRel=REL_GAP, gapAbs=ABS_GAP, threads=1, presolve=False
            )

    def minimize(self, c: np.ndarray, time_limit: float | None = None) -> Outcome:
        import pulp

        t0 = time.perf_counter()
        c = np.asarray(c, dtype=np.float64)
        self.prob.setObjective(pulp.lpSum(float(c[j]) * self.xs[j] for j in np.nonzero(c)[0]))
        y = None
        try:
            code = self.prob.solve(self._solver(False, time_limit))
            status = pulp.LpStatus[code]
            if status == "Optimal":
                y = np.zeros(self.form.A.shape[0])
                for i, name in self.cons:
                    pi = self.prob.get_constraint_by_name(name).pi
                    y[i] += 0.0 if pi is None else float(pi)
        except Exception as e:  # a failed solve falls back to the interval bound
            status = f"failed: {e}"
        bound = dual_bound(self.program, c, self.form, y)
        if self.integer:
            left = None if time_limit is None else max(time_limit - (time.perf_counter() - t0), 0.05)
            try:
                code = self.prob.solve(self._solver(True, left))
                status = pulp.LpStatus[code]
                # CBC reports "Optimal" for a stopped run with an incumbent only if sol_status says so
                proven = status == "Optimal" and self.prob.sol_status == pulp.LpSolutionOptimal
                obj = pulp.value(self.prob.objective)
                obj = 0.0 if obj is None else float(obj)
                if proven and math.isfinite(obj):
                    bound = max(bound, gap_bound(self.program, c, obj, REL_GAP, ABS_GAP))
                elif not proven:
                    status = f"{status} (not proven optimal)"
            except Exception as e:
                status = f"failed: {e}"
        return Outcome(bound, status, time.perf_counter() - t0)
