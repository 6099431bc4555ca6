"""Solver back ends for :class:`~boundflow.solvers.program.Program`: HiGHS (LP and MILP, through
``highspy``) and SCIP (mixed-integer bilinear programs, through ``pyscipopt``).

Why these two (and not PuLP or cvxpy) — see ``docs/solvers.md``: a sound bound needs the
solver's *proven* (dual) bound, also when a time limit stops it.  ``highspy`` gives LP duals (from
which :meth:`Program.safe_bound` computes a rigorous bound) and the MIP dual bound, keeps the model
between solves so re-solving with a new objective is warm-started; SCIP solves non-convex
quadratic (bilinear) constraints to global optimality by spatial branch and bound and reports
its dual bound.  PuLP drives HiGHS/CBC through files and does not return a dual bound after a
time limit; cvxpy's convex relaxations of these programs are the LP that HiGHS solves directly.

Every ``minimize`` returns a number ``b`` with ``b <= c @ x`` for every feasible point (of the
*exact* program for ``mibp``/SCIP, of the relaxation otherwise, which contains it):

* ``lp``: the safe dual bound from the LP duals, whatever the solver status (any multipliers give
  a valid bound; after a failure, the interval bound);
* ``milp``/``mibp``: ``max(lp bound, solver dual bound - pad)`` (``mibp`` also takes the
  ``milp`` bound), ``pad = 1e-7 (1 + sum_j |c_j|
  max(|l_j|, |u_j|))`` for the solvers' feasibility tolerances (both set to 1e-7).  This pad is
  an engineering margin, not a proof: MILP/MIBP bounds are as trustworthy as the solvers'
  tolerances; the LP bound is rigorous.  A solve stopped by its time limit contributes its dual
  bound, never the incumbent; a failed solve contributes nothing beyond the LP bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from boundflow.solvers.program import Program

__all__ = ["Outcome", "LpSolver", "MilpSolver", "ScipSolver", "make_solver", "MODES"]

MODES = ("lp", "milp", "mibp")


@dataclass
class Outcome:
    """``bound``: the sound lower bound; ``status``: the solver's words; ``seconds``."""

    bound: float
    status: str
    seconds: float


def _pad(program: Program, c: np.ndarray, rel: float = 1e-7) -> float:
    lo, hi = np.asarray(program.lower), np.asarray(program.upper)
    return rel * (1.0 + float(np.sum(np.abs(c) * np.maximum(np.abs(lo), np.abs(hi)))))


class _Highs:
    """One HiGHS instance holding the program; the objective changes between solves."""

    def __init__(self, program: Program, integer: bool, mccormick: str):
        import highspy

        self.program = program
        self.form = program.linear_form(mccormick)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("random_seed", 0)
        lp = highspy.HighsLp()
        n = program.n_vars
        lp.num_col_ = n
        lp.num_row_ = self.form.A.shape[0]
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_ = np.asarray(program.lower, dtype=np.float64)
        lp.col_upper_ = np.asarray(program.upper, dtype=np.float64)
        inf = highspy.kHighsInf
        lp.row_lower_ = np.where(np.isfinite(self.form.row_lower), self.form.row_lower, -inf)
        lp.row_upper_ = np.where(np.isfinite(self.form.row_upper), self.form.row_upper, inf)
        csc = self.form.A.tocsc()
        csc.sort_indices()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
        lp.a_matrix_.index_ = csc.indices.astype(np.int32)
        lp.a_matrix_.value_ = csc.data
        lp.a_matrix_.num_col_ = n
        lp.a_matrix_.num_row_ = lp.num_row_
        if integer and any(program.integer):
            lp.integrality_ = [
                highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in program.integer
            ]
        self.integer = integer and any(program.integer)
        h.passModel(lp)
        self.h = h
        self._cost_idx = np.zeros(0, dtype=np.int32)

    def set_objective(self, c: np.ndarray) -> None:
        nz = np.nonzero(c)[0].astype(np.int32)
        if len(self._cost_idx):
            self.h.changeColsCost(len(self._cost_idx), self._cost_idx, np.zeros(len(self._cost_idx)))
        self.h.changeColsCost(len(nz), nz, c[nz].astype(np.float64))
        self._cost_idx = nz

    def run(self, c: np.ndarray, time_limit: float | None):
        self.set_objective(c)
        self.h.setOptionValue("time_limit", float(time_limit) if time_limit else float("inf"))
        self.h.run()
        return self.h.modelStatusToString(self.h.getModelStatus())


class LpSolver:
    """LP relaxation (binaries relaxed to [0, 1], products by McCormick envelopes); safe dual bound."""

    mode = "lp"

    def __init__(self, program: Program):
        self.program = program
        self.lp = _Highs(program, integer=False, mccormick="all")

    def minimize(self, c: np.ndarray, time_limit: float | None = None) -> Outcome:
        t0 = time.perf_counter()
        c = np.asarray(c, dtype=np.float64)
        try:
            status = self.lp.run(c, time_limit)
            y = np.asarray(self.lp.h.getSolution().row_dual, dtype=np.float64)
            if y.shape != (self.lp.form.A.shape[0],):
                y = None
        except Exception as e:  # a failed solve falls back to the interval bound
            status, y = f"failed: {e}", None
        bound = self.program.safe_bound(c, self.lp.form, y)
        return Outcome(bound, status, time.perf_counter() - t0)


class MilpSolver(LpSolver):
    """Binaries integral (so products with a binary are exact), other products by McCormick."""

    mode = "milp"

    def __init__(self, program: Program, mip_rel_gap: float = 1e-4):
        super().__init__(program)
        self.mip = _Highs(program, integer=True, mccormick="all")
        self.mip.h.setOptionValue("mip_rel_gap", mip_rel_gap)
        self.mip.h.setOptionValue("mip_abs_gap", 1e-9)
        self.mip.h.setOptionValue("mip_feasibility_tolerance", 1e-7)

    def minimize(self, c: np.ndarray, time_limit: float | None = None) -> Outcome:
        t0 = time.perf_counter()
        base = super().minimize(c, time_limit)
        if not self.mip.integer:
            return base
        c = np.asarray(c, dtype=np.float64)
        left = None if time_limit is None else max(time_limit - base.seconds, 0.05)
        try:
            status = self.mip.run(c, left)
            dual = float(self.mip.h.getInfo().mip_dual_bound)
        except Exception as e:
            status, dual = f"failed: {e}", -math.inf
        bound = base.bound
        if math.isfinite(dual) and status != "Infeasible":
            bound = max(bound, dual - _pad(self.program, c))
        return Outcome(bound, status, time.perf_counter() - t0)


class ScipSolver(MilpSolver):
    """The exact mixed-integer bilinear program in SCIP (spatial branch and bound); its bound is
    the best of SCIP's, the MILP's and the LP's (all valid), so ``mibp`` is never looser than
    ``milp``, which is never looser than ``lp``."""

    mode = "mibp"

    def __init__(self, program: Program):
        super().__init__(program)
        from pyscipopt import Model, quicksum

        self._quicksum = quicksum
        m = Model()
        m.hideOutput()
        m.setParam("randomization/randomseedshift", 0)
        m.setParam("limits/gap", 1e-4)
        m.setParam("numerics/feastol", 1e-7)
        xs = [
            m.addVar(lb=lo, ub=hi, vtype="B" if (integ and lo >= 0 and hi <= 1) else ("I" if integ else "C"))
            for lo, hi, integ in zip(program.lower, program.upper, program.integer)
        ]
        form = program.linear_form("binary")  # products with a binary: exact McCormick rows
        A = form.A.tocsr()
        for i in range(A.shape[0]):
            s, e = A.indptr[i], A.indptr[i + 1]
            expr = quicksum(float(v) * xs[j] for j, v in zip(A.indices[s:e], A.data[s:e]))
            lo, hi = form.row_lower[i], form.row_upper[i]
            if lo == hi:
                m.addCons(expr == float(lo))
            else:
                if np.isfinite(lo):
                    m.addCons(expr >= float(lo))
                if np.isfinite(hi):
                    m.addCons(expr <= float(hi))
        for z, x, y in program.split_products()[1]:
            m.addCons(xs[z] == xs[x] * xs[y])
        self.m, self.xs = m, xs

    def minimize(self, c: np.ndarray, time_limit: float | None = None) -> Outcome:
        t0 = time.perf_counter()
        base = super().minimize(c, time_limit)
        c = np.asarray(c, dtype=np.float64)
        m = self.m
        try:
            m.freeTransform()
            nz = np.nonzero(c)[0]
            m.setObjective(self._quicksum(float(c[j]) * self.xs[j] for j in nz), "minimize")
            left = 1e20 if time_limit is None else max(time_limit - base.seconds, 0.05)
            m.setParam("limits/time", left)
            m.optimize()
            status = m.getStatus()
            dual = float(m.getDualbound()) if status != "infeasible" else -math.inf
        except Exception as e:
            status, dual = f"failed: {e}", -math.inf
        bound = base.bound
        if math.isfinite(dual) and abs(dual) < 1e19:
            bound = max(bound, dual - _pad(self.program, c))
        return Outcome(bound, str(status), time.perf_counter() - t0)


def make_solver(program: Program, mode: str):
    """The solver for ``mode``: ``lp`` (HiGHS LP), ``milp`` (HiGHS MILP) or ``mibp`` (SCIP)."""
    if mode == "lp":
        return LpSolver(program)
    if mode == "milp":
        return MilpSolver(program)
    if mode == "mibp":
        return ScipSolver(program)
    raise ValueError(f"unknown solver mode {mode!r}; choose from {', '.join(MODES)}")
