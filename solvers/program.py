"""A solver-independent optimisation program: bounded variables, linear rows, binaries and
bilinear products ``z = x * y``.

Every variable has a finite box (the encoders take it from interval or linear bounds), which
is what makes the *safe* bound of :meth:`Program.safe_bound` possible: for any multipliers ``y``
of the rows, ``c @ x >= sum_i min(y_i rl_i, y_i ru_i) + sum_j min(r_j l_j, r_j u_j)`` with
``r = c - A.T @ y`` holds for every point of the box that satisfies the rows, whatever ``y`` is
(weak duality; Neumaier and Shcherbina, 2004).  With ``y = 0`` it is the interval bound of the
objective over the variable box, the fallback when a solver fails.

Back ends translate a program: products whose one operand is a binary become the four
McCormick rows, which are *exact* when the binary is integral (the big-M formulation); other
products stay bilinear for SCIP or become McCormick envelopes (a relaxation) for HiGHS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

__all__ = ["Program", "LinearForm", "Propagator"]


@dataclass
class LinearForm:
    """The rows of a program as a sparse matrix: ``row_lower <= A @ x <= row_upper``."""

    A: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray


@dataclass
class Program:
    """Variables are integers ``0..n-1``.  Build with :meth:`var`, :meth:`rows`,
    :meth:`product`; read back with :meth:`linear_form`.  Picklable (numpy arrays and lists)."""

    lower: list = field(default_factory=list)
    upper: list = field(default_factory=list)
    integer: list = field(default_factory=list)
    _ri: list = field(default_factory=list)  # COO row indices (per block)
    _ci: list = field(default_factory=list)
    _v: list = field(default_factory=list)
    _rl: list = field(default_factory=list)
    _ru: list = field(default_factory=list)
    n_rows: int = 0
    products: list = field(default_factory=list)  # (z, x, y) index triples
    # (h, x, a, lo, hi, first row): h = max(x, 0), x in [lo, hi], binary a, its three big-M rows
    relus: list = field(default_factory=list)

    @property
    def n_vars(self) -> int:
        return len(self.lower)

    # -- building ----------------------------------------------------------------------------
    def var(self, lower, upper, integer: bool = False) -> np.ndarray:
        """New variables with the given bounds (arrays broadcast together); returns their indices
        in the shape of the bounds.  Raises if a bound is not finite or ``lower > upper``."""
        lo, hi = np.broadcast_arrays(np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64))
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError(f"Program.var: {int((~np.isfinite(lo) | ~np.isfinite(hi)).sum())} non-finite bounds")
        bad = lo > hi
        if bad.any():
            raise ValueError(f"Program.var: lower > upper in {int(bad.sum())} of {lo.size} entries")
        start = self.n_vars
        self.lower.extend(lo.ravel().tolist())
        self.upper.extend(hi.ravel().tolist())
        self.integer.extend([integer] * lo.size)
        return np.arange(start, start + lo.size).reshape(lo.shape)

    def binary(self, shape) -> np.ndarray:
        return self.var(np.zeros(shape), np.ones(shape), integer=True)

    def rows(self, row, col, val, lower, upper) -> None:
        """Add ``len(lower)`` rows; entry ``k`` puts ``val[k]`` at (local row ``row[k]``,
        variable ``col[k]``); duplicates are summed."""
        lower = np.atleast_1d(np.asarray(lower, dtype=np.float64))
        upper = np.atleast_1d(np.asarray(upper, dtype=np.float64))
        row = np.asarray(row, dtype=np.int64).ravel()
        self._ri.append(row + self.n_rows)
        self._ci.append(np.asarray(col, dtype=np.int64).ravel())
        self._v.append(np.asarray(val, dtype=np.float64).ravel())
        self._rl.append(lower)
        self._ru.append(upper)
        self.n_rows += len(lower)

    def affine_eq(self, out: np.ndarray, terms: list[tuple[np.ndarray, np.ndarray]], const) -> None:
        """Rows ``out = sum_t M_t @ vars_t + const``: ``out`` (n,), each ``M_t`` (n, m_t) dense
        or a scalar (elementwise ``m * vars``, same shape as ``out``)."""
        n = out.size
        rows, cols, vals = [np.arange(n)], [out.ravel()], [np.ones(n)]
        for vars_t, M in terms:
            M = np.asarray(M, dtype=np.float64)
            if M.ndim == 2:
                r, c = np.nonzero(M)
                rows.append(r)
                cols.append(vars_t.ravel()[c])
                vals.append(-M[r, c])
            else:
                rows.append(np.arange(n))
                cols.append(vars_t.ravel())
                vals.append(-np.broadcast_to(M, (n,)).ravel())
        c = np.broadcast_to(np.asarray(const, dtype=np.float64), (n,))
        self.rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), c, c)

    def product(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """New variables ``z = x * y`` (elementwise, broadcast), bounded by the interval product."""
        x, y = np.broadcast_arrays(np.asarray(x), np.asarray(y))
        lo_x, hi_x = self.bounds(x)
        lo_y, hi_y = self.bounds(y)
        cands = np.stack([lo_x * lo_y, lo_x * hi_y, hi_x * lo_y, hi_x * hi_y])
        z = self.var(cands.min(0), cands.max(0))
        for zi, xi, yi in zip(z.ravel().tolist(), x.ravel().tolist(), y.ravel().tolist()):
            self.products.append((zi, xi, yi))
        return z

    def relu(self, x: int, lo: float, hi: float) -> tuple[int, int]:
        """``h = max(x, 0)`` for an unstable ``x`` (``lo < 0 < hi``, its bounds) by the big-M
        rows ``h >= x``, ``h <= x - lo (1 - a)``, ``h <= hi a`` with a new binary ``a`` (``h >= 0``
        by its box); exact when ``a`` is integral, the triangle relaxation when ``a`` is relaxed.
        Returns ``(h, a)``."""
        h = int(self.var(0.0, hi))
        a = int(self.binary(()))
        self.relus.append((h, x, a, float(lo), float(hi), self.n_rows))
        self.rows(
            [0, 0, 1, 1, 1, 2, 2],
            [h, x, h, x, a, h, a],
            [1, -1, 1, -1, -lo, 1, -hi],
            [0, -np.inf, -np.inf],
            [np.inf, -lo, 0],
        )
        return h, a

    def bounds(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(self.lower)[idx]
        hi = np.asarray(self.upper)[idx]
        return lo, hi

    def tighten(self, idx: np.ndarray, lower, upper) -> None:
        """Intersect variable bounds with ``[lower, upper]`` (must stay non-empty)."""
        for i, lo, hi in zip(
            np.ravel(idx), np.broadcast_to(lower, np.shape(idx)).ravel(), np.broadcast_to(upper, np.shape(idx)).ravel()
        ):
            self.lower[i] = max(self.lower[i], float(lo))
            self.upper[i] = min(self.upper[i], float(hi))
            if self.lower[i] > self.upper[i]:
                raise ValueError(f"Program.tighten: variable {i} became empty ({self.lower[i]} > {self.upper[i]})")

    # -- reading -----------------------------------------------------------------------------
    def is_binary(self, i: int) -> bool:
        return self.integer[i] and self.lower[i] >= 0 and self.upper[i] <= 1

    def is_fixed(self, i: int) -> bool:
        return self.lower[i] == self.upper[i]

    def split_products(self) -> tuple[list, list]:
        """``(exact, bilinear)``: products with a binary or a fixed operand (McCormick rows are
        exact for them, the binary being integral) and true bilinear products."""
        exact, bil = [], []
        for z, x, y in self.products:
            simple = self.is_binary(x) or self.is_binary(y) or self.is_fixed(x) or self.is_fixed(y)
            (exact if simple else bil).append((z, x, y))
        return exact, bil

    def linear_form(self, mccormick: str = "all") -> LinearForm:
        """Rows as a sparse matrix, with McCormick rows for ``mccormick`` = ``"all"`` products,
        ``"binary"`` (only those with a binary operand) or ``"none"``."""
        ri, ci, v = list(self._ri), list(self._ci), list(self._v)
        rl, ru = list(self._rl), list(self._ru)
        n_rows = self.n_rows
        with_bin, bil = self.split_products()
        chosen = {"all": with_bin + bil, "binary": with_bin, "none": []}[mccormick]
        if chosen:
            z, x, y = (np.array(a, dtype=np.int64) for a in zip(*chosen))
            lo, hi = np.asarray(self.lower), np.asarray(self.upper)
            xl, xu, yl, yu = lo[x], hi[x], lo[y], hi[y]
            m = len(z)
            # z - a*y - b*x  >= / <=  -a*b  for the four corner planes
            planes = [(xl, yl, True), (xu, yu, True), (xu, yl, False), (xl, yu, False)]
            for k, (a, b, is_lower) in enumerate(planes):
                r = n_rows + k * m + np.arange(m)
                ri += [r, r, r]
                ci += [z, y, x]
                v += [np.ones(m), -a, -b]
                rhs = -a * b
                rl.append(rhs if is_lower else np.full(m, -np.inf))
                ru.append(np.full(m, np.inf) if is_lower else rhs)
            n_rows += 4 * m
        if ri:
            A = sp.csr_matrix(
                (np.concatenate(v), (np.concatenate(ri), np.concatenate(ci))), shape=(n_rows, self.n_vars)
            )
        else:
            A = sp.csr_matrix((0, self.n_vars))
        return LinearForm(A, np.concatenate(rl) if rl else np.zeros(0), np.concatenate(ru) if ru else np.zeros(0))

    def interval_bound(self, c: np.ndarray) -> float:
        """``min c @ x`` over the variable box alone (the fallback bound)."""
        return self.safe_bound(c, None, None)

    def safe_bound(
        self,
        c: np.ndarray,
        form: LinearForm | None,
        y: np.ndarray | None,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> float:
        """A lower bound on ``c @ x`` over every point of the box satisfying ``form``, valid for
        any multipliers ``y`` (see the module docstring); rounding in the float64 sum is covered
        by a relative pad of the summed magnitudes.  ``lower``/``upper``: a sub-box of the
        program's (a branch of a search) instead of its own bounds."""
        lo = np.asarray(self.lower if lower is None else lower)
        hi = np.asarray(self.upper if upper is None else upper)
        eps = np.finfo(np.float64).eps
        terms = []
        r = np.asarray(c, dtype=np.float64).copy()
        if form is not None and y is not None and len(y):
            y = np.asarray(y, dtype=np.float64).copy()
            y[(y > 0) & ~np.isfinite(form.row_lower)] = 0.0
            y[(y < 0) & ~np.isfinite(form.row_upper)] = 0.0
            y[~np.isfinite(y)] = 0.0
            side = np.where(y > 0, form.row_lower, form.row_upper)
            side = np.where(y != 0, side, 0.0)  # an unused infinite side contributes nothing
            terms.append(y * side)
            r = r - form.A.T @ y
            # rounding of r = c - A.T y: at most (k + 2) eps (|c| + |A|.T |y|) per entry
            k = int(np.diff(form.A.tocsc().indptr).max(initial=0))
            r_err = (k + 2) * eps * (np.abs(c) + abs(form.A).T @ np.abs(y))
        else:
            r_err = np.zeros_like(r)
        terms.append(np.where(r > 0, r * lo, r * hi))
        allt = np.concatenate(terms)
        total = math.fsum(allt.tolist())
        pad = 4 * eps * (math.fsum(np.abs(allt).tolist()) + len(allt))
        pad += math.fsum((r_err * np.maximum(np.abs(lo), np.abs(hi))).tolist())
        return total - pad


class Propagator:
    """Domain propagation over the rows of one :class:`LinearForm`: a box ``[lower, upper]``
    shrunk by the rows (each row ``l <= a @ x <= u`` bounds every one of its variables by the
    other variables' box), rounded outwards, integer variables to whole numbers.

    Guaranteed: every point of the input box that satisfies the rows lies in the returned box
    (float64 residuals are widened by a bound on their rounding error), so any bound computed
    over the returned box holds over the input box; ``None`` only when no point of the box
    satisfies the rows.  A tightening smaller than ``min_gain`` of a variable's range is not
    applied (it would only cost rounds).  Incremental: given the variables ``changed`` since a
    box that was already propagated, only the rows holding them are revisited."""

    def __init__(self, form: LinearForm, integer, rounds: int = 12, min_gain: float = 1e-6):
        self.csr = form.A.tocsr()
        self.csr.sum_duplicates()
        # a stored zero (a McCormick row at a bound of 0) bounds nothing: dividing by it must
        # never produce a bound
        self.csr.eliminate_zeros()
        self.csc = self.csr.tocsc()
        self.rl, self.ru = np.asarray(form.row_lower, float), np.asarray(form.row_upper, float)
        self.per_row = np.diff(self.csr.indptr)
        self.integer = np.asarray(integer, dtype=bool)
        self.rounds, self.min_gain = rounds, min_gain

    def _rows_of(self, cols: np.ndarray) -> np.ndarray:
        ptr = self.csc.indptr
        parts = [self.csc.indices[ptr[j] : ptr[j + 1]] for j in cols.tolist()]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def __call__(self, lower, upper, changed=None):
        eps = np.finfo(np.float64).eps
        lo = np.array(lower, dtype=np.float64)
        hi = np.array(upper, dtype=np.float64)
        n_rows = self.csr.shape[0]
        active = np.arange(n_rows) if changed is None else self._rows_of(np.asarray(changed, dtype=np.int64))
        for _ in range(self.rounds):
            if not len(active):
                break
            sub = self.csr[active]
            k = len(active)
            rows = np.repeat(np.arange(k), np.diff(sub.indptr))
            cols, a = sub.indices, sub.data
            ru, rl, per_row = self.ru[active][rows], self.rl[active][rows], self.per_row[active][rows]
            pos = a > 0
            # each nonzero's smallest and largest contribution a_ij x_j over the box
            with np.errstate(invalid="ignore", over="ignore"):
                cmin = np.where(pos, a * lo[cols], a * hi[cols])
                cmax = np.where(pos, a * hi[cols], a * lo[cols])
            inf_min, inf_max = ~np.isfinite(cmin), ~np.isfinite(cmax)
            fmin, fmax = np.where(inf_min, 0.0, cmin), np.where(inf_max, 0.0, cmax)
            n_inf_min = np.bincount(rows, inf_min, k)[rows]
            n_inf_max = np.bincount(rows, inf_max, k)[rows]
            mag = np.bincount(rows, np.abs(fmin) + np.abs(fmax), k)[rows]
            # the other variables' activity: finite only when none of them is unbounded
            r_min = np.bincount(rows, fmin, k)[rows] - fmin
            r_max = np.bincount(rows, fmax, k)[rows] - fmax
            ok_min = (n_inf_min - inf_min) == 0
            ok_max = (n_inf_max - inf_max) == 0
            fin_u, fin_l = np.isfinite(ru), np.isfinite(rl)
            # rounding of the sums and the subtraction, widened outwards
            err = (per_row + 4) * eps * (mag + np.abs(np.where(fin_u, ru, 0.0)) + np.abs(np.where(fin_l, rl, 0.0)))
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                # a x_j <= u - r_min  and  a x_j >= l - r_max
                up = np.where(ok_min & fin_u, (ru - r_min + err) / a, np.nan)
                dn = np.where(ok_max & fin_l, (rl - r_max - err) / a, np.nan)
                cand_hi = np.where(pos, up, dn)
                cand_lo = np.where(pos, dn, up)
                cand_hi = cand_hi + 4 * eps * np.abs(cand_hi)
                cand_lo = cand_lo - 4 * eps * np.abs(cand_lo)
            new_hi, new_lo = hi.copy(), lo.copy()
            m = ~np.isnan(cand_hi)
            np.minimum.at(new_hi, cols[m], cand_hi[m])
            m = ~np.isnan(cand_lo)
            np.maximum.at(new_lo, cols[m], cand_lo[m])
            new_hi[self.integer] = np.floor(new_hi[self.integer])
            new_lo[self.integer] = np.ceil(new_lo[self.integer])
            span = np.where(np.isfinite(hi - lo), hi - lo, np.inf)
            step = self.min_gain * np.maximum(span, 1e-300)
            gain_hi = (new_hi < hi - step) | (self.integer & (new_hi < hi))
            gain_lo = (new_lo > lo + step) | (self.integer & (new_lo > lo))
            moved = np.nonzero(gain_hi | gain_lo)[0]
            if not len(moved):
                break
            hi = np.where(gain_hi, new_hi, hi)
            lo = np.where(gain_lo, new_lo, lo)
            if np.any(lo[moved] > hi[moved]):
                return None
            active = self._rows_of(moved)
        return lo, hi
