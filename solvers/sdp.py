"""The SDP relaxation of a :class:`~solvers.program.Program` (Raghunathan, Steinhardt and Liang,
2018) with the LP's rows kept, solved through cvxpy, and a lower bound that is rigorous whatever
the solver's accuracy.

**Variables.**  Variables fixed by their box are constants; a variable defined by an equality
row (the affine layers: pre-activations, outputs) is eliminated, written as an affine function
``T_i [1; b]`` of the *base* variables ``b`` (the network input and the ReLU outputs, in a ReLU
network); the ReLU binaries are projected out (their big-M rows become the triangle's upper
line).  The relaxation lifts ``b`` into ``M = [[1, b^T], [b, B]] >= 0``, standing for
``[1; b][1; b]^T``.

**Constraints**, each a range on a linear function of ``M``:

* every other row of the program's LP relaxation (the triangle relaxation of ReLU, big-M rows of
  max pooling with relaxed binaries, McCormick rows of products), and every variable's box;
* ``(v_i - l_i)(u_i - v_i) >= 0`` for every variable, base or eliminated (this is how the
  intermediate bounds enter);
* ``h (h - x) = 0`` for every ReLU ``h = max(x, 0)`` of the program.

Every point of the network gives a feasible rank-one ``M``, and the LP's rows are kept, so the
SDP optimum is never below the LP's; :class:`SdpSolver` returns the larger of the two bounds.

**Rounding.**  ``T`` is computed in float64; ``delta_i`` bounds ``|v_i - T_i [1; b]|`` at the
network's points (propagated with the standard dot-product error bound), and every constraint
range is widened by what ``delta`` and the rounding of its coefficients can move it, so the
network's points satisfy the stored constraints exactly.

**The bound.**  For any multipliers ``y`` (the solver's duals; their sign decides the side of
each range), the Lagrangian ``<S, M> + k`` is at most the objective at every feasible ``M``,
and the constraints imply ``M_ii <= beta_i^2`` (``beta_i = max(|l_i|, |u_i|)``).  With
``D = diag(beta)``, ``<S, M> >= n_+ min(0, lambda_min(D S D))`` (``n_+``: entries with
``beta_i > 0``), so::

    bound = k + n_+ min(0, lambda_min(D S D)) - (objective's rounding) - pad

holds for *any* ``y`` (the argument of Jansson's rigorous SDP bounds, with the implied trace
bound); ``pad`` covers float64 rounding in forming ``S`` and ``k`` and in the eigenvalue.  The
multiplier of ``M_00 = 1`` is re-optimised over this (concave) bound by golden-section search.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import scipy.sparse as sp

from solvers.backends import LpSolver, Outcome
from solvers.program import Program

__all__ = ["SdpSolver", "SdpRelaxation", "MAX_LIFTED", "lifted_size"]

MAX_LIFTED = 100  # base variables at most: the PSD matrix has (n + 1)^2 entries (about a minute per solve at 100)
EPS = float(np.finfo(np.float64).eps)


def _gamma(k: int) -> float:
    """A bound on the relative error of a float64 sum of ``k`` products, with margin."""
    return 2.0 * (k + 2) * EPS


class SdpRelaxation:
    """The relaxation of the module docstring, in matrix form: base variables, ``T``, ``delta``,
    first-order rows ``F m0 in [f_lo, f_hi]`` (``m0 = M[:, 0]``) and quadratic rows
    ``G vec(M) in [g_lo, g_hi]``."""

    def __init__(self, program: Program):
        n = program.n_vars
        lo = np.asarray(program.lower, dtype=np.float64)
        hi = np.asarray(program.upper, dtype=np.float64)
        form = program.linear_form("all")
        A = sp.csr_matrix(form.A)
        rl, ru = form.row_lower, form.row_upper
        defines, base, drop = _roles(program, A, rl, ru)
        fixed = lo == hi
        self.n_vars, self.base = n, np.array(base, dtype=np.int64)
        size = len(base) + 1
        self.size = size
        col = {v: k + 1 for k, v in enumerate(base)}
        T = np.zeros((n, size))
        Tabs_beta = np.zeros(n)  # |T_i| . beta (beta: 1 for the constant, max(|l|, |u|) for base)
        delta = np.zeros(n)
        beta = np.ones(size)
        for v, k in col.items():
            beta[k] = max(abs(lo[v]), abs(hi[v]))
        self.beta = beta
        known = np.zeros(n, dtype=bool)
        for i in range(n):
            if fixed[i]:
                T[i, 0] = lo[i]
            elif i in col:
                T[i, col[i]] = 1.0
            elif i in defines:
                r = defines[i]
                cols = A.indices[A.indptr[r] : A.indptr[r + 1]]
                vals = A.data[A.indptr[r] : A.indptr[r + 1]]
                a_i = float(vals[cols == i].sum())
                others = cols != i
                oc, ov = cols[others], vals[others]
                if not known[oc].all() or a_i == 0.0:
                    raise ValueError(f"sdp: equality row {r} defines variable {i} from later variables")
                row = -(ov @ T[oc])
                row[0] += rl[r]
                T[i] = row / a_i
                mag = abs(rl[r]) + float(np.abs(ov) @ Tabs_beta[oc])
                delta[i] = (float(np.abs(ov) @ delta[oc]) + _gamma(len(oc) + 1) * mag) / abs(a_i)
                delta[i] = delta[i] * (1 + 4 * EPS) + 2 * EPS * float(np.abs(T[i]) @ beta)
            else:  # a relu binary, projected out: never used by the kept rows
                known[i] = False
                continue
            known[i] = True
            Tabs_beta[i] = float(np.abs(T[i]) @ beta)
        self.T, self.delta, self.known = T, delta, known
        self.lo, self.hi = lo, hi

        # first-order rows: the kept LP rows and the triangle lines, widened for rounding
        F_rows, f_lo, f_hi = [], [], []
        used_rows = set(defines.values()) | drop
        keep = [r for r in range(A.shape[0]) if r not in used_rows]
        if keep:
            Ak = A[keep]
            if Ak.nnz and not known[np.unique(Ak.indices)].all():
                raise ValueError("sdp: a kept row uses a projected-out binary (not a relu program?)")
            Fk = np.asarray(Ak @ T)
            absA = abs(Ak)
            widen = absA @ delta + np.array([_gamma(Ak.indptr[j + 1] - Ak.indptr[j]) for j in range(len(keep))]) * (
                absA @ Tabs_beta
            )
            F_rows.append(Fk)
            f_lo.append(rl[keep] - widen)
            f_hi.append(ru[keep] + widen)
        for h, x, _, l_, u_, _ in program.relus:  # h <= s (x - l), s >= u / (u - l) rounded up
            s = u_ / (u_ - l_) * (1 + 8 * EPS)
            row = T[h] - s * T[x]
            rhs = -s * l_ * (1 + 4 * EPS)
            w = delta[h] + s * delta[x] + _gamma(2) * (Tabs_beta[h] + s * Tabs_beta[x])
            F_rows.append(row[None])
            f_lo.append(np.array([-np.inf]))
            f_hi.append(np.array([rhs + w]))
        # boxes of every variable with a role (eliminated ones widened by delta)
        live = np.nonzero(known & ~fixed)[0]
        F_rows.append(T[live])
        f_lo.append(lo[live] - delta[live])
        f_hi.append(hi[live] + delta[live])
        self.F = np.concatenate(F_rows)
        self.f_lo, self.f_hi = np.concatenate(f_lo), np.concatenate(f_hi)

        # quadratic rows: (v - l)(u - v) >= 0 per live variable; h (h - x) = 0 per relu
        G_r, G_c, G_v, g_lo, g_hi, g_eq = [], [], [], [], [], []
        k = 0

        def quad(p, q, lower, upper, eq=False):
            nonlocal k
            pi, qi = np.nonzero(p)[0], np.nonzero(q)[0]
            outer = np.outer(p[pi], q[qi]) / 2
            ii, jj = np.meshgrid(pi, qi, indexing="ij")
            # symmetric: (p q^T + q p^T) / 2, flattened column-major (j * size + i)
            G_r.append(np.full(2 * outer.size, k))
            G_c.append(np.concatenate([(jj * size + ii).ravel(), (ii * size + jj).ravel()]))
            G_v.append(np.concatenate([outer.ravel(), outer.ravel()]))
            slack = 4 * EPS * float(np.abs(p) @ beta) * float(np.abs(q) @ beta)
            g_lo.append(lower - slack)
            g_hi.append(upper + slack)
            g_eq.append(eq)
            k += 1

        for i in live:
            li, ui = lo[i] - delta[i], hi[i] + delta[i]
            p = T[i].copy()
            p[0] -= li
            q = -T[i]
            q[0] += ui
            quad(p, q, 0.0, np.inf)
        for h, x, _, _, _, _ in program.relus:
            p = T[h]
            q = T[h] - T[x]
            bh, bx = max(abs(lo[h]), abs(hi[h])), max(abs(lo[x]), abs(hi[x]))
            tau = (bh + delta[h]) * (delta[h] + delta[x] + 2 * EPS * float(np.abs(q) @ beta)) + (bh + bx) * delta[h]
            quad(p, q, -tau, tau, eq=True)  # h (h - x) = 0, up to the rounding tau
        if k:
            self.G = sp.csr_matrix(
                (np.concatenate(G_v), (np.concatenate(G_r), np.concatenate(G_c))), shape=(k, size * size)
            )
        else:
            self.G = sp.csr_matrix((0, size * size))
        self.g_lo, self.g_hi, self.g_eq = np.array(g_lo), np.array(g_hi), np.array(g_eq, dtype=bool)
        self.Tabs_beta = Tabs_beta

    def objective(self, c: np.ndarray) -> tuple[np.ndarray, float]:
        """The objective ``c @ v`` as ``f @ m0`` and the most the network's value can differ."""
        c = np.asarray(c, dtype=np.float64)
        nz = np.nonzero(c)[0]
        if not self.known[nz].all():
            raise ValueError("sdp: the objective uses a projected-out binary")
        f = c[nz] @ self.T[nz]
        err = float(np.abs(c[nz]) @ self.delta[nz]) + _gamma(len(nz)) * float(np.abs(c[nz]) @ self.Tabs_beta[nz])
        return f, err

    def bound(self, f: np.ndarray, err: float, y_f, y_g, t0: float) -> float:
        """The rigorous bound of the module docstring for multipliers ``y_f`` (first-order rows),
        ``y_g`` (quadratic rows) and ``t0`` (``M_00 = 1``); any values are valid."""
        size = self.size
        terms = []
        lin = f.copy()
        lin_abs = np.abs(f)
        if y_f is not None:
            y_f = np.where(np.isfinite(y_f), y_f, 0.0)
            y_f = np.where((y_f > 0) & ~np.isfinite(self.f_hi), 0.0, y_f)
            y_f = np.where((y_f < 0) & ~np.isfinite(self.f_lo), 0.0, y_f)
            side = np.where(y_f > 0, self.f_hi, np.where(y_f < 0, self.f_lo, 0.0))
            terms.append(-y_f * side)
            lin = lin + self.F.T @ y_f
            lin_abs = lin_abs + np.abs(self.F).T @ np.abs(y_f)
        S = np.zeros((size, size))
        S_abs = np.zeros((size, size))
        if y_g is not None and len(y_g):
            y_g = np.where(np.isfinite(y_g), y_g, 0.0)
            y_g = np.where((y_g > 0) & ~np.isfinite(self.g_hi), 0.0, y_g)
            y_g = np.where((y_g < 0) & ~np.isfinite(self.g_lo), 0.0, y_g)
            side = np.where(y_g > 0, self.g_hi, np.where(y_g < 0, self.g_lo, 0.0))
            terms.append(-y_g * side)
            S += (self.G.T @ y_g).reshape(size, size, order="F")
            S_abs += (abs(self.G).T @ np.abs(y_g)).reshape(size, size, order="F")
        S[0, :] += lin / 2
        S[:, 0] += lin / 2
        S_abs[0, :] += lin_abs / 2
        S_abs[:, 0] += lin_abs / 2
        allt = np.concatenate(terms) if terms else np.zeros(0)
        k0 = math.fsum(allt.tolist())
        n_terms = (0 if y_f is None else len(y_f)) + (0 if y_g is None else len(y_g)) + 2
        beta = self.beta
        n_pos = int((beta > 0).sum())
        Ss = S * beta[:, None] * beta[None, :]
        norm = float(np.linalg.norm(Ss))

        def value(t):
            Ss[0, 0] += t
            lam = float(np.linalg.eigvalsh(Ss)[0])
            Ss[0, 0] -= t
            return k0 - t + n_pos * min(0.0, lam)

        t = _golden_max(value, float(t0), scale=1.0 + abs(t0) + norm)
        best = value(t)
        pad = _gamma(n_terms) * float(beta @ S_abs @ beta)  # forming S
        pad += 4 * EPS * (math.fsum(np.abs(allt).tolist()) + abs(t) + len(allt))  # forming k
        pad += 16 * size * EPS * (norm + abs(t)) * n_pos  # the eigenvalue
        out = best - err - pad
        return out if math.isfinite(out) else -math.inf


def _roles(program: Program, A: sp.csr_matrix, rl: np.ndarray, ru: np.ndarray):
    """``(defines, base, drop)``: the equality row defining each eliminated variable (its last
    variable, neither fixed nor a binary), the base variables (neither fixed, eliminated nor a
    ReLU binary), and the big-M upper rows of the ReLUs (replaced by the triangle's line)."""
    lo, hi = np.asarray(program.lower), np.asarray(program.upper)
    relu_bins = {a for _, _, a, _, _, _ in program.relus}
    drop = set()
    for _, _, _, _, _, r0 in program.relus:
        drop.update((r0 + 1, r0 + 2))
    defines: dict[int, int] = {}
    for r in range(A.shape[0]):
        if r in drop or not (rl[r] == ru[r] and math.isfinite(rl[r])):
            continue
        cols = A.indices[A.indptr[r] : A.indptr[r + 1]][A.data[A.indptr[r] : A.indptr[r + 1]] != 0]
        if len(cols) == 0:
            continue
        v = int(cols.max())
        if v not in defines and not program.integer[v] and lo[v] < hi[v]:
            defines[v] = r
    base = [i for i in range(program.n_vars) if lo[i] < hi[i] and i not in defines and i not in relu_bins]
    return defines, base, drop


def lifted_size(program: Program) -> int:
    """The number of base variables the SDP of ``program`` lifts (the PSD matrix is one larger);
    cheap, for refusing a program before any solve."""
    form = program.linear_form("all")
    return len(_roles(program, sp.csr_matrix(form.A), form.row_lower, form.row_upper)[1])


class SdpSolver:
    """``minimize(c)`` over the SDP relaxation (cvxpy; Clarabel by default); the bound is the
    larger of the rigorous SDP bound and the LP's (HiGHS, rigorous dual bound), so never looser
    than ``lp``.  ``last_sdp``: the SDP bound of the last call alone."""

    mode = "sdp"

    def __init__(self, program: Program, solver: str = "CLARABEL", max_lifted: int = MAX_LIFTED):
        import cvxpy as cp

        self.program, self.solver = program, solver
        rel = self.rel = SdpRelaxation(program)
        if rel.size - 1 > max_lifted:
            raise ValueError(
                f"sdp: the program has {rel.size - 1} base variables; the SDP relaxation is for small "
                f"networks (at most {max_lifted}); use lp or crown"
            )
        self.lp = LpSolver(program)
        size = rel.size
        M = cp.Variable((size, size), PSD=True)
        m0 = M[:, 0]
        self.f = cp.Parameter(size)
        lo_f, hi_f = np.nonzero(np.isfinite(rel.f_lo))[0], np.nonzero(np.isfinite(rel.f_hi))[0]
        vec = cp.vec(M, order="F")
        eq_g = np.nonzero(rel.g_eq)[0]  # the relu rows: solved as equalities
        ineq_g = np.setdiff1d(np.arange(len(rel.g_lo)), eq_g)
        glo = ineq_g[np.isfinite(rel.g_lo[ineq_g])]
        ghi = ineq_g[np.isfinite(rel.g_hi[ineq_g])]
        self.parts = []  # (constraint, "f"/"g", rows, sign): y[rows] += sign * dual
        cons = [M[0, 0] == 1]
        self.one = cons[0]

        def add(con, kind, rows, sign):
            cons.append(con)
            self.parts.append((con, kind, rows, sign))

        if len(lo_f):
            add(rel.F[lo_f] @ m0 >= rel.f_lo[lo_f], "f", lo_f, -1.0)
        if len(hi_f):
            add(rel.F[hi_f] @ m0 <= rel.f_hi[hi_f], "f", hi_f, 1.0)
        if len(glo):
            add(rel.G[glo] @ vec >= rel.g_lo[glo], "g", glo, -1.0)
        if len(ghi):
            add(rel.G[ghi] @ vec <= rel.g_hi[ghi], "g", ghi, 1.0)
        if len(eq_g):
            add(rel.G[eq_g] @ vec == 0, "g", eq_g, 1.0)
        self.problem = cp.Problem(cp.Minimize(self.f @ m0), cons)
        self.last_sdp = -math.inf

    def _multipliers(self):
        y_f, y_g = np.zeros(len(self.rel.f_lo)), np.zeros(len(self.rel.g_lo))
        for con, kind, rows, sign in self.parts:
            d = con.dual_value
            if d is None:
                return None, None, 0.0
            np.add.at(y_f if kind == "f" else y_g, rows, sign * np.asarray(d, dtype=np.float64).ravel())
        t0 = self.one.dual_value
        return y_f, y_g, float(np.ravel(t0)[0]) if t0 is not None else 0.0

    def minimize(self, c: np.ndarray, time_limit: float | None = None) -> Outcome:
        t0 = time.perf_counter()
        c = np.asarray(c, dtype=np.float64)
        lp = self.lp.minimize(c, time_limit)
        f, err = self.rel.objective(c)
        self.f.value = f
        try:
            opts = {} if time_limit is None or self.solver != "CLARABEL" else {"time_limit": max(time_limit, 0.05)}
            with warnings.catch_warnings():  # "may be inaccurate": the bound below is rigorous anyway
                warnings.simplefilter("ignore", UserWarning)
                self.problem.solve(solver=self.solver, **opts)
            status = str(self.problem.status)
            y_f, y_g, t = self._multipliers()
        except Exception as e:  # a failed solve leaves the bound of the PSD cone and the box
            status, (y_f, y_g, t) = f"failed: {e}", (None, None, 0.0)
        self.last_sdp = self.rel.bound(f, err, y_f, y_g, t)
        bound = max(self.last_sdp, lp.bound)
        return Outcome(bound, "Optimal" if status == "optimal" else status, time.perf_counter() - t0)


def _golden_max(f, t0: float, scale: float, iters: int = 24) -> float:
    """A maximiser of the concave function ``f`` near ``t0``: an interval found by stepping out
    (doubling), then golden-section search; ``t0`` when nothing better is found."""
    f0 = f(t0)
    step = 1e-6 * scale
    fa, fb = f(t0 - step), f(t0 + step)
    if fa <= f0 and fb <= f0:
        lo_t, hi_t = t0 - step, t0 + step
    else:
        d = 1.0 if fb > fa else -1.0
        prev, cur, fc = t0, t0 + d * step, max(fa, fb)
        while True:
            nxt = t0 + 2 * (cur - t0)
            fn = f(nxt)
            if fn <= fc or abs(nxt - t0) > 1e6 * scale:
                break
            prev, cur, fc = cur, nxt, fn
        lo_t, hi_t = min(prev, nxt), max(prev, nxt)
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi_t - g * (hi_t - lo_t), lo_t + g * (hi_t - lo_t)
    f1, f2 = f(x1), f(x2)
    for _ in range(iters):
        if f1 < f2:
            lo_t, x1, f1 = x1, x2, f2
            x2 = lo_t + g * (hi_t - lo_t)
            f2 = f(x2)
        else:
            hi_t, x2, f2 = x2, x1, f1
            x1 = hi_t - g * (hi_t - lo_t)
            f1 = f(x1)
    return max([(f0, t0), (f1, x1), (f2, x2)])[1]
