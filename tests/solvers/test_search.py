"""The rigorous MILP search of :mod:`solvers.backends`: domain propagation over a program's
rows (:class:`solvers.program.Propagator`) and goal queries (``MilpSolver.minimize(goal=...)``,
the verifier's leaves), by containment over random programs and networks of every scale."""

from __future__ import annotations

import numpy as np
import pytest

from solvers.backends import MilpSolver
from solvers.program import Program, Propagator


def _program_through(seed: int):
    """A random sparse program with rows of every sense around a known point ``x*`` (some of its
    variables integer), at a scale ``10^s``, s in [-8, 3]; returns ``(program, x*)``."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-8, 3)
    n = int(rng.integers(3, 12))
    integer = rng.random(n) < 0.3
    x = rng.normal(size=n) * scale
    x[integer] = rng.integers(0, 2, integer.sum())
    lo = x - rng.random(n) * scale * 3
    hi = x + rng.random(n) * scale * 3
    lo[integer], hi[integer] = 0.0, 1.0
    p = Program()
    p.var(lo, hi)
    for j in np.nonzero(integer)[0]:
        p.integer[j] = True
    for _ in range(int(rng.integers(2, 3 * n))):
        cols = rng.choice(n, size=int(rng.integers(1, min(n, 5) + 1)), replace=False)
        vals = rng.normal(size=len(cols)) * 10.0 ** rng.uniform(-3, 3, size=len(cols))
        act = float(vals @ x[cols])
        kind = rng.integers(0, 3)
        slack = abs(act) * rng.random() * (kind != 2)
        lower = act - slack if kind in (0, 2) else -np.inf
        upper = act + slack if kind in (1, 2) else np.inf
        p.rows(np.zeros(len(cols), dtype=np.int64), cols, vals, [lower], [upper])
    return p, x


@pytest.mark.parametrize("seed", range(60))
def test_propagation_keeps_every_point_that_satisfies_the_rows(seed):
    p, x = _program_through(seed)
    form = p.linear_form()
    box = Propagator(form, p.integer)(p.lower, p.upper)
    assert box is not None, "a box holding a feasible point was called empty"
    lo, hi = box
    assert (lo <= x).all() and (x <= hi).all(), (lo - x, hi - x)
    assert (lo >= np.asarray(p.lower)).all() and (hi <= np.asarray(p.upper)).all()
    # incremental: fixing one integer variable at x*'s value keeps x* too
    ints = np.nonzero(p.integer)[0]
    if len(ints):
        j = int(ints[0])
        lo2, hi2 = lo.copy(), hi.copy()
        lo2[j] = hi2[j] = x[j]
        out = Propagator(form, p.integer)(lo2, hi2, [j])
        assert out is not None and (out[0] <= x).all() and (x <= out[1]).all()


def test_propagation_tightens_and_proves_emptiness():
    p = Program()
    p.var([0.0, 0.0, 0.0], [5.0, 5.0, 1.0])
    p.integer[2] = True
    p.rows([0, 0], [0, 1], [1.0, 1.0], [-np.inf], [1.0])  # x0 + x1 <= 1
    p.rows([0, 0], [0, 2], [1.0, -4.0], [-np.inf], [0.5])  # x0 <= 0.5 + 4 a
    lo, hi = Propagator(p.linear_form(), p.integer)([0.0, 0.9, 0.0], [5.0, 5.0, 1.0])
    assert hi[0] <= 0.1 + 1e-12 and hi[1] <= 1.0 + 1e-12
    assert lo[2] == 0.0 and hi[2] == 1.0
    # x0 >= 0.6 forces a = 1 (integer rounding) ...
    lo, hi = Propagator(p.linear_form(), p.integer)([0.6, 0.0, 0.0], [5.0, 5.0, 1.0])
    assert lo[2] == 1.0
    # ... and with a = 0 no point is left
    assert Propagator(p.linear_form(), p.integer)([0.6, 0.0, 0.0], [5.0, 5.0, 0.0]) is None


def _relu_net_program(seed: int):
    """A random 2-k-k-1 ReLU network over a box, as a program (big-M ReLUs from interval
    bounds), activations at scale ``10^s``; returns ``(program, c, f, lo, hi)`` with ``f`` the
    network (float64) and ``c`` selecting its output."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-8, 3)
    widths = [2, int(rng.integers(3, 8)), int(rng.integers(3, 8)), 1]
    Ws = [rng.normal(size=(b, a)) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    bs = [rng.normal(size=b) * scale for b in widths[1:]]
    lo = rng.normal(size=2) * scale - scale * rng.random(2)
    hi = lo + 2 * scale * rng.random(2)

    def f(x):
        for k, (W, b) in enumerate(zip(Ws, bs, strict=True)):
            x = x @ W.T + b
            if k < len(Ws) - 1:
                x = np.maximum(x, 0)
        return x[..., 0]

    p = Program()
    prev = p.var(lo, hi)
    plo, phi = lo, hi
    for k, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        mid, rad = W @ ((plo + phi) / 2) + b, np.abs(W) @ ((phi - plo) / 2)
        zl, zu = mid - rad * (1 + 1e-9) - 1e-300, mid + rad * (1 + 1e-9) + 1e-300
        z = p.var(zl, zu)
        p.affine_eq(z, [(prev, W)], b)
        if k == len(Ws) - 1:
            c = np.zeros(p.n_vars)
            c[z[0]] = 1.0
            return p, c, f, lo, hi
        outs = []
        for j in range(len(z)):
            if zl[j] >= 0:
                outs.append(int(z[j]))
            elif zu[j] <= 0:
                outs.append(int(p.var(0.0, 0.0)))
            else:
                outs.append(p.relu(int(z[j]), float(zl[j]), float(zu[j]))[0])
        prev = np.asarray(outs)
        plo, phi = np.maximum(zl, 0), np.maximum(zu, 0)
    raise AssertionError


@pytest.mark.parametrize("seeds", [range(0, 20), range(20, 40)])
def test_goal_query_never_claims_a_bound_above_an_attained_value(seeds):
    proved = below = 0
    for seed in seeds:
        p, c, f, lo, hi = _relu_net_program(seed)
        rng = np.random.default_rng(1000 + seed)
        xs = lo + (hi - lo) * rng.random((20000, 2))
        ys = f(xs)
        attained = float(ys.min())
        tol = 1e-12 * float(np.abs(ys).max())
        exact = MilpSolver(p).minimize(c, time_limit=20.0).bound  # a rigorous lower bound
        for goal in (exact - abs(exact) * 0.5 - 1e-300, attained + abs(attained) * 0.5 + 1e-300):
            out = MilpSolver(p).minimize(c, time_limit=20.0, goal=goal)
            assert out.bound <= attained + tol, (seed, goal, out.bound, attained)
            if goal < exact:
                below += 1
                proved += out.bound > goal
    # a goal under the minimum is proved (the search closes), not only left open
    assert proved >= 0.9 * below, (proved, below)


def test_propagation_ignores_stored_zero_coefficients():
    """A row may store a zero coefficient (McCormick rows at a bound of 0): it bounds nothing,
    on either side of the row."""
    for lower, upper in ((0.5, np.inf), (-np.inf, 0.5)):
        p = Program()
        p.var([-1.0, 0.0], [1.0, 1.0])
        p.rows([0, 0], [0, 1], [0.0, 1.0], [lower], [upper])
        form = p.linear_form()
        assert form.A.nnz == 2  # the zero is stored
        lo, hi = Propagator(form, [False, False])([-1.0, 0.0], [1.0, 1.0])
        assert lo[0] == -1.0 and hi[0] == 1.0
