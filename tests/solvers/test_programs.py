"""The solver back end: safe LP bounds, MILP/LP network encodings (against grid-search optima,
sampling and attacks), bounded weights (McCormick and exact bilinear), time limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import boundflow as bf
from boundflow.encode.network import network_bounds
from solvers.backends import LpSolver, MilpSolver, ScipSolver
from solvers.program import Program
from tests.support.programs import lp_reference, random_lp
from tests.support.sampled import assert_weight_samples_inside, linear_models, sampled_points

D = torch.float64


@pytest.mark.parametrize("seed", range(6))
def test_safe_lp_bound_matches_an_independent_lp_solver(seed):
    p, c = random_lp(seed)
    ref = lp_reference(p, c)
    out = LpSolver(p).minimize(c)
    assert out.bound <= ref + 1e-12
    assert out.bound >= ref - 1e-9


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.floats(-5, 5), min_size=5, max_size=5))
def test_safe_bound_is_valid_for_any_multipliers(seed, y):
    """Weak duality with arbitrary (even bad) multipliers never exceeds the true minimum."""
    p, c = random_lp(seed % 50)
    form = p.linear_form()
    ref = lp_reference(p, c)
    assert p.safe_bound(c, form, np.array(y)) <= ref + 1e-12
    assert p.safe_bound(c, form, None) == pytest.approx(p.interval_bound(c))


def test_program_rejects_bad_bounds_with_counts():
    p = Program()
    with pytest.raises(ValueError, match=r"lower > upper in 2 of 3"):
        p.var([0, 2, 3], [1, 1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        p.var([0], [np.inf])


def test_products_exact_with_binary_and_bilinear_in_scip():
    p = Program()
    x = p.var([-1.0, -2.0], [2.0, 1.0])
    a = p.binary(1)
    p.rows([0, 0], [x[0], x[1]], [1.0, 1.0], [-np.inf], [0.5])
    z = p.product(x[:1], x[1:])[0]
    w = p.product(a, x[:1])[0]
    e = np.eye(p.n_vars)
    # x0 * x1 over {x0 + x1 <= 0.5}: min -4 at (2, -2), max 2 at (-1, -2)
    for solver in (MilpSolver(p), ScipSolver(p)):
        assert solver.minimize(e[w]).bound == pytest.approx(-1.0, abs=1e-6)  # a * x0 in [-1, 2]
        assert -solver.minimize(-e[w]).bound == pytest.approx(2.0, abs=1e-6)
    assert ScipSolver(p).minimize(e[z]).bound == pytest.approx(-4.0, abs=1e-6)
    assert -ScipSolver(p).minimize(-e[z]).bound == pytest.approx(2.0, abs=1e-6)
    # McCormick is a relaxation: the LP bound may be looser but never tighter than the truth
    assert -LpSolver(p).minimize(-e[z]).bound >= 2.0 - 1e-9


@pytest.mark.parametrize("act", ["relu", "maxpool"])
def test_milp_equals_grid_search_optimum_and_lp_is_looser(act):
    torch.manual_seed(4)
    if act == "relu":
        model = nn.Sequential(nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1)).to(D)
    else:

        class Pool(nn.Module):
            def __init__(self):
                super().__init__()
                self.l1, self.l2 = nn.Linear(2, 16), nn.Linear(4, 1)

            def forward(self, x):
                h = torch.relu(self.l1(x)).reshape(-1, 1, 4, 4)
                return self.l2(nn.functional.max_pool2d(h, 2).flatten(1))

        model = Pool().to(D)
    x = torch.tensor([[0.3, -0.2]], dtype=D)
    eps = 0.5
    n = 401
    g = torch.linspace(-eps, eps, n, dtype=D)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + x
    with torch.no_grad():
        y = model(grid)
    true_lo, true_hi = y.min().item(), y.max().item()
    lip = sum(float(m.weight.detach().abs().sum(1).max()) for m in model.modules() if isinstance(m, nn.Linear))
    slack = lip * (2 * eps / (n - 1))  # how far the grid can miss the optimum
    milp = bf.compute_bounds(model, x - eps, x + eps, method="milp")
    lp = bf.compute_bounds(model, x - eps, x + eps, method="lp")
    crown = bf.compute_bounds(model, x - eps, x + eps, method="crown")
    assert milp[0].item() <= true_lo + 1e-9 and milp[1].item() >= true_hi - 1e-9
    assert milp[0].item() >= true_lo - slack and milp[1].item() <= true_hi + slack
    assert lp[0].item() <= milp[0].item() + 1e-9 and lp[1].item() >= milp[1].item() - 1e-9
    assert lp[0].item() >= crown[0].item() - 1e-12 and lp[1].item() <= crown[1].item() + 1e-12


@pytest.mark.parametrize("name", ["mlp-relu", "mlp-leaky", "mlp-sigmoid-tanh", "cnn-maxpool-bn", "cnn-avgpool"])
def test_lp_milp_containment_and_ordering(name):
    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(1))[:2]
    eps = 0.05
    crown = bf.compute_bounds(model, x - eps, x + eps, method="crown")
    lp = bf.compute_bounds(model, x - eps, x + eps, method="lp")
    milp = bf.compute_bounds(model, x - eps, x + eps, method="milp")
    tol = 1e-9
    assert (lp[0] >= crown[0] - tol).all() and (lp[1] <= crown[1] + tol).all()
    assert (milp[0] >= lp[0] - 1e-7).all() and (milp[1] <= lp[1] + 1e-7).all()
    pts = sampled_points(model, x, eps, n=120)
    with torch.no_grad():
        for pt in pts:
            y = model(pt)
            for lo, hi in (lp, milp):
                assert (y >= lo - tol).all() and (y <= hi + tol).all(), name


def test_specification_matrix_and_bounded_weights():

    model, shape = linear_models()["mlp-relu"]
    model = model.to(D)
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(2))[:2]
    eps = 0.05
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=D)
    lo, hi = bf.compute_bounds(model, x - eps, x + eps, method="milp", C=C)
    c_lo, c_hi = bf.compute_bounds(model, x - eps, x + eps, method="crown", C=C)
    assert lo.shape == (2, 2) and (lo >= c_lo - 1e-9).all() and (hi <= c_hi + 1e-9).all()
    pts = sampled_points(model, x, eps, n=60)
    with torch.no_grad():
        for pt in pts:
            v = model(pt) @ C.T
            assert (v >= lo - 1e-9).all() and (v <= hi + 1e-9).all()
    params = bf.interval_parameters(model, 0.003, requires_grad=False)
    res = {m: network_bounds(model, x - eps, x + eps, m, params) for m in ("lp", "milp", "mibp")}
    crown_w = bf.compute_bounds(model, x - eps, x + eps, method="crown", params=params)
    assert (res["lp"][0] >= crown_w[0] - 1e-9).all()
    assert (res["mibp"][0] >= res["lp"][0] - 1e-9).all() and (res["mibp"][1] <= res["lp"][1] + 1e-9).all()
    assert_weight_samples_inside(model, params, x, eps, res, 150, corners_every=2)


def test_tiny_time_limit_still_sound():
    """A solve stopped by its limit contributes its proven bound, never an incumbent."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 2)).to(D)
    x = torch.randn(1, 4, dtype=D)
    eps = 0.4
    for mode in ("lp", "milp", "mibp"):
        lo, hi = network_bounds(model, x - eps, x + eps, mode, time_limit=1e-3)
        crown = bf.compute_bounds(model, x - eps, x + eps, method="crown")
        assert (lo >= crown[0] - 1e-12).all() and (hi <= crown[1] + 1e-12).all()
        pts = sampled_points(model, x, eps, n=100)
        with torch.no_grad():
            for pt in pts:
                y = model(pt)
                assert (y >= lo - 1e-9).all() and (y <= hi + 1e-9).all(), mode


def test_unsupported_op_names_the_node():
    class Sq(nn.Module):  # the maximum of two variables has no encoding yet
        def forward(self, x):
            return torch.maximum(x, -x)

    with pytest.raises(bf.UnsupportedOperation, match=r"no encoding|no linear-relaxation rule|not supported"):
        bf.compute_bounds(nn.Sequential(nn.Linear(2, 2), Sq()), torch.zeros(1, 2), torch.ones(1, 2), method="milp")
    with pytest.raises(ValueError, match="unknown mode"):
        network_bounds(nn.Linear(2, 1), torch.zeros(1, 2), torch.ones(1, 2), "exact")
