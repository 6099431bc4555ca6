"""The SDP relaxation (``method="sdp"``, :mod:`solvers.sdp`): containment of sampled and attacked
outputs over random architectures, ``lp <= sdp <= exact MILP optimum``, a bound that stays below
the optimum for *any* multipliers, large weights (the elimination's rounding), and the refusal
of programs too large for it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import boundflow as bf
from boundflow.bench.tightness import attack
from boundflow.domains.linear.crown import crown, prepare
from boundflow.encode.network import encode, network_bounds
from boundflow.errors import UnsupportedOperation
from boundflow.graph import capture
from boundflow.models import mlp
from solvers.backends import LpSolver, MilpSolver
from solvers.sdp import MAX_LIFTED, SdpSolver, lifted_size
from tests.support.docs import ROOT, python_blocks

D = torch.float64


def _arch(seed: int) -> tuple[nn.Module, torch.Tensor, float]:
    """A random ReLU MLP (input 2-5, 1-3 hidden layers of 3-9), a centre and a radius."""
    g = torch.Generator().manual_seed(seed)
    d_in = int(torch.randint(2, 6, (1,), generator=g))
    hidden = [int(torch.randint(3, 10, (1,), generator=g)) for _ in range(int(torch.randint(1, 4, (1,), generator=g)))]
    torch.manual_seed(seed)
    model = mlp([d_in, *hidden, int(torch.randint(1, 4, (1,), generator=g))]).to(D).eval()
    x = torch.rand(1, d_in, generator=g, dtype=D)
    eps = float(0.2 + 1.3 * torch.rand((), generator=g, dtype=D))
    return model, x, eps


def _program(model, lo, hi):
    g = capture(model, (lo + hi) / 2, None)
    st = prepare(g, lo, hi)
    crown(g, lo, hi, None, state=st)
    return encode(g, st)


def _sampled(model, lo, hi, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, lo.shape[1], generator=g, dtype=D)
    u[: n // 4] = (u[: n // 4] < 0.5).to(D)  # corners
    with torch.no_grad():
        return model(lo + (hi - lo) * u)


@pytest.mark.parametrize("seed", range(8))
def test_sdp_contains_outputs_and_sits_between_lp_and_milp(seed):
    model, x, eps = _arch(seed)
    lo, hi = x - eps, x + eps
    lp = network_bounds(model, lo, hi, "lp")
    sdp = network_bounds(model, lo, hi, "sdp")
    milp_lo, milp_hi, exact = network_bounds(model, lo, hi, "milp", return_exact=True)
    ys = _sampled(model, lo, hi)
    n_out = ys.shape[1]
    C = torch.cat([torch.eye(n_out, dtype=D), -torch.eye(n_out, dtype=D)]).unsqueeze(0)
    att = attack(model, lo, hi, C)[0]
    tol = 1e-7 * (1 + ys.abs().max())
    assert (sdp[0][0] <= ys.min(0).values + tol).all() and (sdp[1][0] >= ys.max(0).values - tol).all()
    assert (sdp[0][0] <= att[:n_out] + tol).all() and (-sdp[1][0] <= att[n_out:] + tol).all()
    assert (sdp[0] >= lp[0] - 1e-9).all() and (sdp[1] <= lp[1] + 1e-9).all()
    gap = 2e-4 * (1 + milp_lo.abs())  # the MILP's relative gap
    assert (sdp[0] <= milp_lo + gap)[exact].all() and (sdp[1] >= milp_hi - gap)[exact].all()


def test_sdp_is_strictly_tighter_than_lp_and_its_own_bound_is_never_below_lp():
    """On a network with many unstable ReLUs the SDP closes most of the LP's gap (measured:
    -0.342 -> -0.120 with the MILP at -0.022), and the SDP bound alone is not below the LP's."""
    torch.manual_seed(1)
    model = mlp([4, 16, 16, 3]).to(D).eval()
    x = torch.rand(1, 4, dtype=D)
    program, out = _program(model, x - 1.0, x + 1.0)
    sdp, lp, milp = SdpSolver(program), LpSolver(program), MilpSolver(program)
    gains = []
    for j in range(len(out)):
        for sign in (1.0, -1.0):
            c = np.zeros(program.n_vars)
            c[out[j]] = sign
            b_lp, b_milp = lp.minimize(c).bound, milp.minimize(c).bound
            sdp.minimize(c)
            assert sdp.last_sdp >= b_lp - 1e-6 * (1 + abs(b_lp))
            assert sdp.last_sdp <= b_milp + 2e-4 * (1 + abs(b_milp))
            gains.append((sdp.last_sdp - b_lp) / max(b_milp - b_lp, 1e-12))
    assert max(gains) > 0.5 and sum(g > 0.1 for g in gains) >= 3, gains


@pytest.mark.parametrize("seed", range(3))
def test_sdp_bound_is_below_the_optimum_for_any_multipliers(seed):
    """The bound is a Lagrangian with an eigenvalue correction: any multipliers, however bad,
    give a value below the exact optimum (the MILP's, a ReLU network)."""
    model, x, eps = _arch(seed + 20)
    program, out = _program(model, x - eps, x + eps)
    sdp, milp = SdpSolver(program), MilpSolver(program)
    rel = sdp.rel
    rng = np.random.default_rng(seed)
    c = np.zeros(program.n_vars)
    c[out[0]] = 1.0
    opt = milp.minimize(c)
    assert opt.status.lower() == "optimal"
    f, err = rel.objective(c)
    sdp.minimize(c)
    y_f, y_g, t0 = sdp._multipliers()
    values = [rel.bound(f, err, y_f, y_g, t0), rel.bound(f, err, None, None, 0.0)]
    for scale in (1e-3, 1.0, 1e3):
        for _ in range(4):
            yf = rng.normal(0, scale, len(rel.f_lo))
            yg = rng.normal(0, scale, len(rel.g_lo))
            values.append(rel.bound(f, err, yf, yg, float(rng.normal(0, scale))))
            values.append(rel.bound(f, err, y_f + yf * 1e-3, y_g + yg * 1e-3, t0))  # near the duals
    assert all(v <= opt.bound + 2e-4 * (1 + abs(opt.bound)) for v in values), (values, opt.bound)
    assert all(not math.isnan(v) for v in values)
    assert values[0] > values[1]  # the duals are better than none


def test_sdp_large_weights_and_fixed_neurons_are_contained():
    """Weights of 1e3 (rounding in the eliminated affine layers matters) and a box where some
    ReLUs are fixed (stable active and inactive)."""
    torch.manual_seed(3)
    model = mlp([3, 6, 5, 2]).to(D).eval()
    with torch.no_grad():
        model[0].weight.mul_(1e3)
        model[0].bias.mul_(1e3)
    x = torch.rand(1, 3, dtype=D)
    for eps in (1e-4, 0.05):
        lo, hi = bf.compute_bounds(model, x - eps, x + eps, method="sdp")
        ys = _sampled(model, x - eps, x + eps)
        tol = 1e-9 * (1 + ys.abs().max())
        assert (lo[0] <= ys.min(0).values + tol).all() and (hi[0] >= ys.max(0).values - tol).all()


def test_sdp_on_other_ops_is_contained():
    """Sigmoid (linear relaxation rows), max pooling (relaxed binaries lifted) and bounded
    weights (McCormick rows): sampled outputs inside the bounds."""
    torch.manual_seed(4)
    sig = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).to(D).eval()
    pool = nn.Sequential(
        nn.Unflatten(1, (1, 3, 3)), nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2)
    ).to(D).eval()  # fmt: skip
    for model, d_in in ((sig, 3), (pool, 9)):
        x = torch.rand(1, d_in, dtype=D)
        lo, hi = bf.compute_bounds(model, x - 0.3, x + 0.3, method="sdp")
        ys = _sampled(model, x - 0.3, x + 0.3)
        assert (lo[0] <= ys.min(0).values + 1e-9).all() and (hi[0] >= ys.max(0).values - 1e-9).all()
    model = mlp([2, 4, 1]).to(D).eval()
    params = bf.interval_parameters(model, 0.05)
    x = torch.rand(1, 2, dtype=D)
    lo, hi = bf.compute_bounds(model, x - 0.2, x + 0.2, method="sdp", params=params)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ps = {
            k: v.lower + (v.upper - v.lower) * torch.rand(v.lower.shape, generator=g, dtype=D)
            for k, v in params.items()
        }
        xs = x - 0.2 + 0.4 * torch.rand(x.shape, generator=g, dtype=D)
        y = torch.func.functional_call(model, ps, (xs,))
        assert (lo <= y + 1e-9).all() and (y <= hi + 1e-9).all()


def test_sdp_refuses_a_program_too_large_before_solving():
    model = mlp([120, 8, 2]).to(D).eval()
    x = torch.rand(1, 120, dtype=D)
    program, _ = _program(model, x - 0.1, x + 0.1)
    assert lifted_size(program) > MAX_LIFTED
    with pytest.raises(UnsupportedOperation, match=r"^sdp: sample 0's program lifts \d+ variables") as e:
        bf.compute_bounds(model, x - 0.1, x + 0.1, method="sdp")
    assert "\n" not in str(e.value)


@pytest.mark.slow  # 25 s (a MILP and an SDP per output); `make test-slow` runs it
def test_the_solvers_page_sdp_example_prints_what_it_says(capsys):
    """docs/solvers.md's SDP block, run as printed: its output is the comment under it."""

    (block,) = [b for b in python_blocks(ROOT / "docs" / "solvers.md") if '"sdp"' in b]
    exec(compile(block, "solvers.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    said = [
        line[2:]
        for line in block.splitlines()
        if line.startswith("# ") and line[2:].split(" ")[0] in ("lp", "sdp", "milp")
    ]
    assert len(printed) == 3 and [p.split()[0] for p in printed] == ["lp", "sdp", "milp"]
    for p, s in zip(printed, said, strict=True):
        assert p.split(maxsplit=1)[1] == s.split(maxsplit=1)[1], (p, s)
