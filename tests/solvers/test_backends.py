"""The program tests every solver back end passes (HiGHS, SCIP, PuLP, cvxpy): sound and tight
LP bounds against scipy's LP, sound and tight MILP bounds against enumeration, exact products
with a binary, the same answers whatever the back end, and a torch-free ``solvers`` package."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import linprog

from solvers import BACKENDS, Program, make_solver, minimize_all
from solvers.pulp_backend import export
from tests.support.programs import lp_reference, random_lp

ALL = sorted(BACKENDS)


def _random_milp(seed: int) -> tuple[Program, np.ndarray, float]:
    """Continuous x in a box, binaries d, rows coupling them; optimum by enumerating d."""
    rng = np.random.default_rng(seed)
    p = Program()
    x = p.var(-np.ones(3), np.ones(3))
    d = p.binary(3)
    A = rng.normal(size=(4, 6))
    r, col = np.nonzero(A)
    allv = np.concatenate([x, d])
    p.rows(r, allv[col], A[r, col], np.full(4, -1.0), np.full(4, 1.0) + np.abs(A[:, 3:]).sum(1))
    c = rng.normal(size=6)
    best = np.inf
    for bits in itertools.product((0.0, 1.0), repeat=3):
        fixed = p.linear_form()
        Ad = fixed.A.toarray()
        rhs_shift = Ad[:, 3:] @ np.array(bits)
        ref = linprog(
            c[:3],
            A_ub=np.vstack([Ad[:, :3], -Ad[:, :3]]),
            b_ub=np.concatenate([fixed.row_upper - rhs_shift, -(fixed.row_lower - rhs_shift)]),
            bounds=[(-1, 1)] * 3,
        )
        if ref.status == 0:
            best = min(best, ref.fun + c[3:] @ np.array(bits))
    assert np.isfinite(best)
    return p, c, float(best)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("seed", range(4))
def test_lp_bound_is_sound_and_tight_on_every_back_end(backend, seed):
    p, c = random_lp(seed)
    ref = lp_reference(p, c)
    out = make_solver(p, "lp", backend).minimize(c)
    assert out.bound <= ref + 1e-12, (backend, out)
    assert out.bound >= ref - 1e-5, (backend, out, ref)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("seed", range(3))
def test_milp_bound_is_sound_and_tight_on_every_back_end(backend, seed):
    p, c, opt = _random_milp(seed)
    out = make_solver(p, "milp", backend).minimize(c)
    assert out.bound <= opt + 1e-9, (backend, out, opt)
    assert out.bound >= opt - 1e-3 * max(1.0, abs(opt)), (backend, out, opt)
    lp = make_solver(p, "lp", backend).minimize(c)
    assert lp.bound <= out.bound + 1e-9  # the MILP bound is never looser than the LP bound


@pytest.mark.parametrize("backend", ALL)
def test_product_with_a_binary_is_exact_in_milp_on_every_back_end(backend):
    """``z = a * x`` with binary ``a``: min z over x in [-1, 2] is -1 (a = 1, x = -1); the LP
    relaxation's McCormick envelope allows the same -1 here, so also test max z = 2."""
    p = Program()
    x = p.var([-1.0], [2.0])
    a = p.binary(1)
    z = p.product(a, x)[0]
    # a <= x + 0.5 : a = 1 needs x >= 0.5
    p.rows([0, 0], [a[0], x[0]], [1.0, -1.0], [-np.inf], [0.5])
    e = np.zeros(p.n_vars)
    e[z] = 1.0
    lo = make_solver(p, "milp", backend).minimize(e).bound
    hi = -make_solver(p, "milp", backend).minimize(-e).bound
    assert -3e-4 <= lo <= 1e-9  # min z = 0 (a = 0, or a = 1 needs x >= 0.5), up to twice the 1e-4 gap
    assert hi == pytest.approx(2.0, abs=1e-5) and hi >= 2.0 - 1e-9


def test_all_back_ends_agree_and_the_executor_passes_the_back_end():
    p, c = random_lp(7)
    objs = [(np.arange(p.n_vars), c), (np.arange(p.n_vars), -c)]
    got = {b: [o.bound for o in minimize_all([(p, objs)], "lp", backend=b)[0]] for b in ALL}
    for b in ALL:
        np.testing.assert_allclose(got[b], got["highs"], atol=1e-5)


def test_mode_and_back_end_errors_name_the_choices():
    p, _ = random_lp(0)
    with pytest.raises(ValueError, match="unknown solver back end 'gurobi'; choose from"):
        make_solver(p, "lp", "gurobi")
    with pytest.raises(ValueError, match="does not solve mode 'mibp'"):
        make_solver(p, "mibp", "pulp")
    with pytest.raises(ValueError, match="unknown solver mode"):
        make_solver(p, "socp")
    with pytest.raises(ValueError, match="does not solve mode 'sdp'"):
        make_solver(p, "sdp", "highs")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pulp_exports_lp_and_mps_files_that_solve_to_the_same_optimum(tmp_path):
    import pulp

    p, c = random_lp(3)
    ref = lp_reference(p, c)
    export(p, tmp_path / "p.mps", c)
    export(p, tmp_path / "p.lp", c)
    assert "x0" in (tmp_path / "p.lp").read_text()
    _, prob = pulp.LpProblem.fromMPS(str(tmp_path / "p.mps"))
    prob.solve(pulp.PULP_CBC_CMD(msg=False))
    assert pulp.value(prob.objective) == pytest.approx(ref, abs=1e-6)
    with pytest.raises(ValueError, match="must end in .lp or .mps"):
        export(p, tmp_path / "p.txt")


def test_import_solvers_pulls_in_no_torch():
    code = "import sys, solvers, solvers.pulp_backend, solvers.cvxpy_backend; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
