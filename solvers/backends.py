"""Solver back ends for :class:`~solvers.program.Program`: HiGHS (LP and MILP, through
``highspy``) and SCIP (LP, MILP and mixed-integer bilinear programs, through ``pyscipopt``).

HiGHS is the default for ``lp``/``milp``: ``highspy`` gives LP duals (from which
:meth:`Program.safe_bound` computes a rigorous bound) and the MIP dual bound, also after a time
limit, and keeps the model between solves (warm starts).  SCIP solves non-convex quadratic
(bilinear) constraints to global optimality by spatial branch and bound and reports its dual
bound (``mibp``); it solves ``lp``/``milp`` too.  :mod:`solvers.pulp_backend` and
:mod:`solvers.cvxpy_backend` run the same programs through PuLP and cvxpy.

Every ``minimize`` returns a number ``b`` with ``b <= c @ x`` for every feasible point (of the
*exact* program for ``mibp``/SCIP, of the relaxation otherwise, which contains it):

* ``lp``: the safe dual bound from the LP duals, whatever the solver status (any multipliers give
  a valid bound; after a failure, the interval bound);
* ``sdp`` (:mod:`solvers.sdp`, cvxpy): the larger of the LP bound and the SDP relaxation's
  bound, rigorous for any duals (a Lagrangian bound with an eigenvalue correction);
* ``milp`` (HiGHS): the MIP solver's dual bound ``D`` is a claim, not a proof (its absolute
  feasibility and integrality tolerances can cut off feasible points when activations are tiny
  against the weights downstream).  :meth:`MilpSolver.certify` turns the claim ``T = D - pad``
  into a rigorous bound: a branch and bound over the binaries whose every leaf is bounded by the
  rigorous LP bound (:meth:`Program.safe_bound` on the leaf's box); a leaf is closed when its
  bound reaches ``T``, or when its LP optimum is integral (its bound is then the leaf's
  optimum); the result is ``min(T, the bounds of the leaves left)``, rigorous whenever the search
  stops (node or time budget), and the status is ``Optimal`` only when every leaf closed at
  ``T`` or above (``exact`` in :func:`~boundflow.encode.network.network_bounds` reads it).
  Every leaf's box is first shrunk by domain propagation over the rows
  (:class:`~solvers.program.Propagator`, rounded outwards), so a fixed binary settles its
  ReLU and the layers after it.  A query with a ``goal`` (the verifier's leaves: is the minimum
  above 0?) runs this search first with the target just above the goal, and the MIP solver only
  when leaves stay open.
* ``mibp`` (SCIP) and the PuLP/cvxpy back ends: ``max(lp bound, solver dual bound - pad)``,
  ``pad = 1e-7 (1 + sum_j |c_j| max(|l_j|, |u_j|))`` for the solvers' tolerances (1e-7): an
  engineering margin, not a proof; their LP bound is rigorous.  A solve stopped by its time
  limit contributes its dual bound, never the incumbent; a failed solve nothing beyond the LP
  bound.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from solvers.program import Program, Propagator

__all__ = [
    "Outcome",
    "LpSolver",
    "MilpSolver",
    "ScipSolver",
    "ScipLinearSolver",
    "make_solver",
    "MODES",
    "BACKENDS",
    "dual_bound",
    "gap_bound",
]

MODES = ("lp", "milp", "mibp", "sdp")
# back end -> the modes it solves; ``None`` picks HiGHS for lp/milp, SCIP for mibp, cvxpy for sdp
BACKENDS = {
    "highs": ("lp", "milp"),
    "scip": ("lp", "milp", "mibp"),
    "pulp": ("lp", "milp"),
    "cvxpy": ("lp", "milp", "sdp"),
}


@dataclass
class Outcome:
    """``bound``: the sound lower bound; ``status``: the solver's words; ``seconds``."""

    bound: float
    status: str
    seconds: float


def _pad(program: Program, c: np.ndarray, rel: float = 1e-7) -> float:
    lo, hi = np.asarray(program.lower), np.asarray(program.upper)
    return rel * (1.0 + float(np.sum(np.abs(c) * np.maximum(np.abs(lo), np.abs(hi)))))


def dual_bound(program: Program, c: np.ndarray, form, y) -> float:
    """The rigorous bound :meth:`Program.safe_bound` from row multipliers ``y`` in whatever sign
    convention a solver reports them: both ``y`` and ``-y`` give valid bounds, the larger is kept
    (``y = None``: the interval bound)."""
    if y is None:
        return program.safe_bound(c, form, None)
    y = np.asarray(y, dtype=np.float64)
    return max(program.safe_bound(c, form, y), program.safe_bound(c, form, -y))


def gap_bound(program: Program, c: np.ndarray, objective: float, rel_gap: float, abs_gap: float = 1e-9) -> float:
    """The dual bound a MILP solver proved when it reports optimality with the given gaps, less
    the feasibility pad: for back ends that report the incumbent's objective and the status, not
    the dual bound itself.  Solvers measure the relative gap against the incumbent, the bound or
    the larger of the two; ``2 rel_gap max(1, |objective|)`` covers each definition (for
    ``rel_gap <= 1/2``), and ``abs_gap`` the absolute one."""
    gap = max(abs_gap, 2.0 * rel_gap * max(1.0, abs(objective)))
    return objective - gap - _pad(program, c)


def _quiet_highs(highspy):
    """A ``highspy.Highs()`` with its output off.  Its constructor prints a licence banner to
    the process's stdout before any option can be set (once per process, so every solver
    process printed it): the constructor runs with file descriptor 1 sent to /dev/null."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                h = highspy.Highs()
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)
    h.setOptionValue("output_flag", False)
    return h


class _Highs:
    """One HiGHS instance holding the program; the objective changes between solves."""

    def __init__(self, program: Program, integer: bool, mccormick: str):
        import highspy

        self.program = program
        self.form = program.linear_form(mccormick)
        h = _quiet_highs(highspy)
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
    GOAL_SHARE = 0.4  # of a goal query's time for the rigorous search before the MIP solver

    def __init__(self, program: Program, mip_rel_gap: float = 1e-4):
        super().__init__(program)
        self.mip = _Highs(program, integer=True, mccormick="all")
        self.mip.h.setOptionValue("mip_rel_gap", mip_rel_gap)
        self.mip.h.setOptionValue("mip_abs_gap", 1e-9)
        self.mip.h.setOptionValue("mip_feasibility_tolerance", 1e-7)
        self.candidate: np.ndarray | None = None
        self.lp_candidate: np.ndarray | None = None  # a goal query's LP optimum when <= goal

    def minimize(self, c: np.ndarray, time_limit: float | None = None, goal: float | None = None) -> Outcome:
        """``goal``: the caller only needs to know whether the minimum exceeds ``goal`` (a
        verifier's leaf: ``goal = 0``).  Then the rigorous search of :meth:`certify` runs first
        with the target just above ``goal`` (a leaf closes as soon as its bound passes the goal,
        far sooner than at the MIP's claim), on up to ``GOAL_SHARE`` of the time; the MIP
        solver runs only if that search leaves leaves open (it finds counterexamples, or
        claims a bound that the search then tries to certify in the time left).  A point the
        search met with an objective ``<= goal`` is kept in :attr:`candidate`."""
        t0 = time.perf_counter()
        self.candidate = self.lp_candidate = None
        base = super().minimize(c, time_limit)
        if goal is not None and base.bound <= goal:
            # the LP's optimal point: a candidate (the whole program when nothing is integer)
            try:
                sol = np.asarray(self.lp.h.getSolution().col_value, dtype=np.float64)
                self.lp_candidate = sol if sol.shape == (self.program.n_vars,) else None
            except Exception:
                self.lp_candidate = None
        if not self.mip.integer or (goal is not None and base.bound > goal):
            return base
        c = np.asarray(c, dtype=np.float64)

        def left(share: float = 1.0) -> float | None:
            if time_limit is None:
                return None
            return max(share * (time_limit - (time.perf_counter() - t0)), 0.05)

        bound = base.bound
        search = None
        if goal is not None:
            search = _Certify(self, c, float(np.nextafter(goal, math.inf)))
            certified, closed = search.run(left(self.GOAL_SHARE))
            bound = max(bound, certified)
            if closed:
                return Outcome(bound, f"Proved above {goal:g} (rigorous search)", time.perf_counter() - t0)
        try:
            status = self.mip.run(c, left())
            dual = float(self.mip.h.getInfo().mip_dual_bound)
        except Exception as e:
            status, dual = f"failed: {e}", -math.inf
        if math.isfinite(dual) and status != "Infeasible":
            claim = dual - _pad(self.program, c)
            if search is not None and claim > goal:
                certified, closed = search.run(left())  # the goal's search goes on
                bound = max(bound, certified)
                if closed:
                    status = f"Proved above {goal:g} (rigorous search, after the MIP solver)"
            elif search is None and claim > bound:
                certified, closed = self.certify(c, claim, left())
                bound = max(bound, certified)
                if not closed and status.lower() == "optimal":
                    status = "Optimal (claimed by the MIP solver; not certified within the budget)"
        elif status == "Infeasible":
            status = "Infeasible (claimed; the LP bound is kept)"
        return Outcome(bound, status, time.perf_counter() - t0)

    def certify(self, c: np.ndarray, target: float, time_limit: float | None, max_nodes: int = 4000):
        """``(bound, closed)``: a rigorous lower bound ``<= target`` on ``c @ x`` over the
        program, by branch and bound on the binaries with rigorous LP bounds at every leaf, and
        whether every leaf closed (then ``bound == target``).  Sound at any stop: the bound of a
        leaf not yet searched is its parent's."""
        return _Certify(self, c, target).run(time_limit, max_nodes)


class _Certify:
    """The search of :meth:`MilpSolver.certify`, resumable: :meth:`run` goes on where the last
    call stopped (a verifier's leaf searches before and after the MIP solver)."""

    def __init__(self, solver: MilpSolver, c: np.ndarray, target: float):
        prog = solver.program
        self.solver, self.c, self.target = solver, np.asarray(c, dtype=np.float64), target
        self.lo0 = np.asarray(prog.lower, dtype=np.float64)
        self.hi0 = np.asarray(prog.upper, dtype=np.float64)
        integer = np.asarray(prog.integer, dtype=bool)
        self.binaries = np.nonzero(integer)[0].astype(np.int32)
        self.propagate = Propagator(solver.lp.form, integer)
        # (the leaf's box, its parent's bound, the variables fixed since the parent's box)
        self.stack: list[tuple[np.ndarray, np.ndarray, float, list | None]] = [(self.lo0, self.hi0, -math.inf, None)]
        self.worst = target
        self.nodes = 0
        # per binary: the output and input of the ReLU it switches (-1: not a ReLU's)
        self.relu_of = None
        if prog.relus:
            self.relu_of = np.full((prog.n_vars, 2), -1, dtype=np.int64)
            for h_, x_, a_, *_ in prog.relus:
                self.relu_of[a_] = (h_, x_)
        self.failed = False

    def _branch(self, frac: np.ndarray, x: np.ndarray) -> int:
        """The binary to split among the fractional ones: for a ReLU's binary, the one whose
        relaxed output lies furthest above the ReLU of its relaxed input (the LP point the
        split removes); otherwise the most fractional."""
        score = np.minimum(x[frac], 1 - x[frac]) * 1e-9
        if self.relu_of is not None and self.BRANCH == "violation":
            hx = self.relu_of[frac]
            has = hx[:, 0] >= 0
            viol = x[hx[has, 0]] - np.maximum(x[hx[has, 1]], 0.0)
            score[has] += viol
        elif self.BRANCH == "fractional":
            score = np.minimum(x[frac], 1 - x[frac])
        return int(frac[np.argmax(score)])

    BRANCH = "violation"

    def _open(self) -> float:
        return min(self.worst, *(e[2] for e in self.stack))

    def run(self, time_limit: float | None, max_nodes: int = 4000) -> tuple[float, bool]:
        """``(bound, closed)`` after searching up to ``time_limit`` seconds more."""
        if self.failed:
            return self._open(), False
        solver, prog, c, target = self.solver, self.solver.program, self.c, self.target
        lp = solver.lp
        h, form = lp.h, lp.form
        lo0, hi0, binaries = self.lo0, self.hi0, self.binaries
        cols = np.arange(prog.n_vars, dtype=np.int32)
        deadline = None if time_limit is None else time.perf_counter() + time_limit
        lp.set_objective(c)
        stack = self.stack
        while stack:
            if self.nodes >= max_nodes or (deadline is not None and time.perf_counter() > deadline):
                return self._open(), False
            lo, hi, parent, changed = stack.pop()
            self.nodes += 1
            # the fixings' consequences through the rows (big-M rows settle the ReLU, the next
            # layers' pre-activations shrink, more binaries fix themselves)
            box = self.propagate(lo, hi, changed)
            if box is None:
                continue  # no point of the program lies in this leaf
            lo, hi = box
            h.changeColsBounds(len(cols), cols, lo, hi)
            try:
                # every LP within the time left (any multipliers it stops with give a bound)
                left = 30.0 if deadline is None else max(0.01, deadline - time.perf_counter())
                h.setOptionValue("time_limit", left)
                h.run()
                status = h.modelStatusToString(h.getModelStatus()).lower()
                sol = h.getSolution()
                y = np.asarray(sol.row_dual, dtype=np.float64)
                x = np.asarray(sol.col_value, dtype=np.float64)
                ray = None
                if "infeasible" in status:
                    has, r = h.getDualRay()[-2:]
                    ray = np.asarray(r, dtype=np.float64) if has else None
            except Exception:  # a failed LP: the leaf and what is left keep their parents' bounds
                stack.append((lo, hi, parent, None))
                self.failed = True
                return self._open(), False
            finally:
                h.changeColsBounds(len(cols), cols, lo0, hi0)
            m = form.A.shape[0]
            if y.shape != (m,):
                y = None
            b = dual_bound_box(prog, c, form, y, lo, hi)
            if ray is not None and ray.shape == (m,):
                # an infeasible leaf: a Farkas ray scaled up proves any bound it can (the
                # solver's word alone is not a proof)
                for scale in (1e2, 1e4, 1e6, 1e8):
                    b = max(b, dual_bound_box(prog, c, form, scale * ray, lo, hi))
            if b >= target:
                continue
            free = binaries[lo[binaries] < hi[binaries]]
            if not len(free):
                self.worst = min(self.worst, b)  # nothing left to split: the leaf's own bound
                continue
            optimal = status == "optimal" and x.shape == (prog.n_vars,)
            frac = free[(x[free] > 1e-9) & (x[free] < 1 - 1e-9)] if optimal else free[:0]
            if optimal and not len(frac):
                self.worst = min(self.worst, b)  # an integral LP optimum: the leaf's bound is its optimum
                if solver.candidate is None:
                    solver.candidate = x.copy()  # a point of the program below the target
                continue
            j = self._branch(frac, x) if len(frac) else int(free[0])
            for v in (0.0, 1.0):
                clo, chi = lo.copy(), hi.copy()
                clo[j] = chi[j] = v
                stack.append((clo, chi, b, [j]))
        return self.worst, self.worst >= target


def dual_bound_box(program: Program, c: np.ndarray, form, y, lower, upper) -> float:
    """:func:`dual_bound` on the sub-box ``[lower, upper]`` of the program's variables."""
    if y is None:
        return program.safe_bound(c, form, None, lower, upper)
    return max(program.safe_bound(c, form, y, lower, upper), program.safe_bound(c, form, -y, lower, upper))


class ScipSolver(MilpSolver):
    """The exact mixed-integer bilinear program in SCIP (spatial branch and bound); its bound is
    the best of SCIP's, the MILP's and the LP's (all valid), so ``mibp`` is never looser than
    ``milp``, which is never looser than ``lp``."""

    mode = "mibp"

    def __init__(self, program: Program):
        super().__init__(program)
        from pyscipopt import quicksum

        self._quicksum = quicksum
        # products with a binary: exact McCormick rows; the others stay bilinear
        self.m, self.xs, _ = _scip_model(program, program.linear_form("binary"), integer=True)
        for z, x, y in program.split_products()[1]:
            self.m.addCons(self.xs[z] == self.xs[x] * self.xs[y])

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


def _scip_model(program: Program, form, integer: bool, presolve: bool = True):
    """A SCIP model of the variables and ``form``'s rows; returns ``(model, vars, [(row, cons)])``."""
    from pyscipopt import SCIP_PARAMSETTING, Model, quicksum

    m = Model()
    m.hideOutput()
    m.setParam("randomization/randomseedshift", 0)
    m.setParam("limits/gap", 1e-4)
    m.setParam("numerics/feastol", 1e-7)
    if not presolve:  # LP duals of the original rows need the untransformed problem
        m.setPresolve(SCIP_PARAMSETTING.OFF)
        m.setHeuristics(SCIP_PARAMSETTING.OFF)
        m.disablePropagation()
    xs = [
        m.addVar(lb=lo, ub=hi, vtype="B" if (integ and lo >= 0 and hi <= 1) else ("I" if integ else "C"))
        for lo, hi, integ in zip(program.lower, program.upper, [i and integer for i in program.integer])
    ]
    A = form.A.tocsr()
    cons = []
    for i in range(A.shape[0]):
        s, e = A.indptr[i], A.indptr[i + 1]
        expr = quicksum(float(v) * xs[j] for j, v in zip(A.indices[s:e], A.data[s:e]))
        lo, hi = form.row_lower[i], form.row_upper[i]
        if lo == hi:
            cons.append((i, m.addCons(expr == float(lo))))
        else:
            if np.isfinite(lo):
                cons.append((i, m.addCons(expr >= float(lo))))
            if np.isfinite(hi):
                cons.append((i, m.addCons(expr <= float(hi))))
    return m, xs, cons


class ScipLinearSolver:
    """``lp`` and ``milp`` in SCIP alone.  ``lp``: SCIP's LP duals (presolve off, so they are the
    duals of the program's own rows) through :func:`dual_bound` — rigorous for any duals.
    ``milp``: the larger of that LP bound and SCIP's proven dual bound less the feasibility pad."""

    def __init__(self, program: Program, integer: bool):
        self.program, self.mode = program, "milp" if integer else "lp"
        self.form = program.linear_form("all")
        self.lp, self.lp_vars, self.lp_cons = _scip_model(program, self.form, integer=False, presolve=False)
        self.integer = integer and any(program.integer)
        if self.integer:
            self.mip, self.mip_vars, _ = _scip_model(program, self.form, integer=True)

    @staticmethod
    def _objective(m, xs, c, time_limit):
        from pyscipopt import quicksum

        m.freeTransform()
        nz = np.nonzero(c)[0]
        m.setObjective(quicksum(float(c[j]) * xs[j] for j in nz), "minimize")
        m.setParam("limits/time", 1e20 if time_limit is None else max(float(time_limit), 0.05))

    def minimize(self, c: np.ndarray, time_limit: float | None = None) -> Outcome:
        t0 = time.perf_counter()
        c = np.asarray(c, dtype=np.float64)
        y = None
        try:
            self._objective(self.lp, self.lp_vars, c, time_limit)
            self.lp.optimize()
            status = str(self.lp.getStatus())
            if status == "optimal":
                y = np.zeros(self.form.A.shape[0])
                for i, cons in self.lp_cons:
                    y[i] += self.lp.getDualsolLinear(cons)
        except Exception as e:  # a failed solve falls back to the interval bound
            status = f"failed: {e}"
        bound = dual_bound(self.program, c, self.form, y)
        if self.integer:
            left = None if time_limit is None else time_limit - (time.perf_counter() - t0)
            try:
                self._objective(self.mip, self.mip_vars, c, left)
                self.mip.optimize()
                status = str(self.mip.getStatus())
                dual = float(self.mip.getDualbound()) if status != "infeasible" else -math.inf
            except Exception as e:
                status, dual = f"failed: {e}", -math.inf
            if math.isfinite(dual) and abs(dual) < 1e19:
                bound = max(bound, dual - _pad(self.program, c))
        return Outcome(bound, status, time.perf_counter() - t0)


def make_solver(program: Program, mode: str, backend: str | None = None):
    """The solver for ``mode`` (``lp``, ``milp``, ``mibp``, ``sdp``) on ``backend`` (see
    :data:`BACKENDS`; default: HiGHS for ``lp``/``milp``, SCIP for ``mibp``, cvxpy for ``sdp``)."""
    if mode not in MODES:
        raise ValueError(f"unknown solver mode {mode!r}; choose from {', '.join(MODES)}")
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown solver back end {backend!r}; choose from {', '.join(BACKENDS)}")
        if mode not in BACKENDS[backend]:
            raise ValueError(
                f"back end {backend!r} does not solve mode {mode!r} (it solves {', '.join(BACKENDS[backend])})"
            )
        if backend == "pulp":
            from solvers.pulp_backend import PulpSolver

            return PulpSolver(program, mode)
        if backend == "cvxpy" and mode != "sdp":
            from solvers.cvxpy_backend import CvxpySolver

            return CvxpySolver(program, mode)
        if backend == "scip" and mode != "mibp":
            return ScipLinearSolver(program, integer=mode == "milp")
    if mode == "lp":
        return LpSolver(program)
    if mode == "milp":
        return MilpSolver(program)
    if mode == "mibp":
        return ScipSolver(program)
    if mode == "sdp":
        from solvers.sdp import SdpSolver

        return SdpSolver(program)
    raise ValueError(f"unknown solver mode {mode!r}; choose from {', '.join(MODES)}")
