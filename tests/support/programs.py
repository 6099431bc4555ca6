"""Random LPs over the torch-free :class:`solvers.Program` and their reference optimum by scipy."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

from solvers import Program


def random_lp(seed: int, n: int = 6, m: int = 5) -> tuple[Program, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = Program()
    x = p.var(-rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n))
    A = rng.normal(size=(m, n))
    r, c = np.nonzero(A)
    kind = rng.integers(0, 4, m)  # ranged, only lower, only upper, equality; all contain x = 0
    lo = np.where(kind == 2, -np.inf, np.where(kind == 3, 0.0, -rng.uniform(0.1, 1, m)))
    up = np.where(kind == 1, np.inf, np.where(kind == 3, 0.0, rng.uniform(0.1, 1, m)))
    p.rows(r, x[c], A[r, c], lo, up)
    return p, rng.normal(size=n)


def lp_reference(p: Program, c: np.ndarray) -> float:
    form = p.linear_form()
    A = form.A.toarray()
    fin_u, fin_l = np.isfinite(form.row_upper), np.isfinite(form.row_lower)
    ref = linprog(
        c,
        A_ub=np.vstack([A[fin_u], -A[fin_l]]),
        b_ub=np.concatenate([form.row_upper[fin_u], -form.row_lower[fin_l]]),
        bounds=list(zip(p.lower, p.upper)),
    )
    assert ref.status == 0
    return float(ref.fun)
