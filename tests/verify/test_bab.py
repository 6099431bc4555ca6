"""Branch and bound on ReLU chains (issue 16): chain extraction, the soundness of CROWN /
alpha / beta bounds for *arbitrary* slopes and multipliers (checked against sampled points of
each sub-domain), forward bounds, exact MILP leaves on both sides of the minimum, and the two searches'
verdicts against known truth on random networks."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from torch import nn

from boundflow.domains.linear.chain import Chain, extract_chain
from boundflow.domains.linear.chain_bounds import backward, forward_bounds, layer_bounds, optimise
from boundflow.verify.leaf import decide
from boundflow.verify.search import (
    Outcome,
    bounded_so_far,
    chain_boxes,
    chain_models,
    count_from_zero,
    input_search,
    relu_search,
)
from tests.support.onnx_files import milp_min


def _mlp(widths, seed, bias=True):
    torch.manual_seed(seed)
    layers = []
    for k in range(len(widths) - 1):
        if k:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(widths[k], widths[k + 1], bias=bias))
    return nn.Sequential(*layers).double()


def _random_chain(seed) -> Chain:
    g = torch.Generator().manual_seed(seed)
    depth = int(torch.randint(1, 4, (1,), generator=g))
    widths = [int(torch.randint(2, 5, (1,), generator=g))] + [
        int(torch.randint(2, 9, (1,), generator=g)) for _ in range(depth)
    ]
    widths.append(int(torch.randint(1, 4, (1,), generator=g)))
    ws = [torch.randn(widths[k + 1], widths[k], generator=g, dtype=torch.float64) for k in range(len(widths) - 1)]
    bs = [0.5 * torch.randn(widths[k + 1], generator=g, dtype=torch.float64) for k in range(len(widths) - 1)]
    return Chain(ws, bs)


def _chain_and_boxes(seed, B):
    """A random chain and ``B`` random boxes of random widths up to 3 for its input."""
    chain = _random_chain(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    n0 = chain.weights[0].shape[1]
    lo = torch.randn(B, n0, generator=g, dtype=torch.float64)
    return chain, lo, lo + 3 * torch.rand(B, n0, generator=g, dtype=torch.float64)


def _pre_activations(chain: Chain, x: torch.Tensor) -> list[torch.Tensor]:
    zs = []
    for k, (w, b) in enumerate(zip(chain.weights, chain.biases, strict=True)):
        x = (x.clamp(min=0) if k else x) @ w.T + b
        zs.append(x)
    return zs


@pytest.mark.parametrize("seed", range(6))
def test_extract_chain_equals_the_model_on_random_architectures(seed):
    g = torch.Generator().manual_seed(seed)
    widths = [int(w) for w in torch.randint(1, 12, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)]
    model = _mlp(widths, seed, bias=bool(seed % 2))
    chain = extract_chain(model, widths[0])
    assert chain is not None and chain.widths == widths[1:]
    x = 10 * torch.randn(32, widths[0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(chain(x), model(x), rtol=1e-12, atol=1e-12)


def test_extract_chain_takes_convolutions_as_dense_layers_within_the_size_limit():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    ).double()
    chain = extract_chain(model, 36)
    assert chain is not None and chain.widths == [32, 3]
    x = torch.randn(8, 36, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(chain(x), model(x), rtol=1e-12, atol=1e-12)
    assert extract_chain(model, 36, max_entries=36 * 32 - 1) is None  # the conv's matrix is too large


class _Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3).double(), nn.Linear(3, 2).double()

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)).double(),
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double(),
        _Skip(),
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 2)).double(),
    ],
    ids=["sigmoid", "tanh", "skip", "softplus"],
)
def test_extract_chain_refuses_what_is_not_a_relu_chain(model):
    assert extract_chain(model, 3) is None


def _feasible_points(chain, lo, hi, splits, n=4000, seed=0):
    """Per sub-domain, sampled points of its box that satisfy its splits (possibly none)."""
    g = torch.Generator().manual_seed(seed)
    pts = []
    for b in range(lo.shape[0]):
        x = lo[b] + (hi[b] - lo[b]) * torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64)
        x = torch.cat([x, torch.stack([torch.where(c, hi[b], lo[b]) for c in _corner_masks(lo.shape[1])])])
        zs = _pre_activations(chain, x)
        ok = torch.ones(len(x), dtype=torch.bool)
        for k, s in enumerate(splits):
            ok &= ((zs[k] * s[b] >= 0) | (s[b] == 0)).all(1)
        pts.append(x[ok])
    return pts


def _corner_masks(d):
    return (
        [torch.tensor(c, dtype=torch.bool) for c in itertools.product([False, True], repeat=min(d, 4))]
        if d <= 4
        else []
    )


@pytest.mark.parametrize("seed", range(12))
def test_beta_bounds_hold_for_arbitrary_slopes_and_multipliers(seed):
    """Random chain, boxes, splits chosen from a sampled point (so sub-domains are non-empty),
    random alpha in [0, 1] and beta >= 0 (large ones too, and out-of-range values, which must be
    clipped), random objective rows and layers."""
    chain = _random_chain(seed)
    g = torch.Generator().manual_seed(100 + seed)
    n0, B = chain.weights[0].shape[1], 4
    lo = torch.randn(B, n0, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(B, n0, generator=g, dtype=torch.float64) * 2
    # splits: signs of a random point's pre-activations on a random subset of neurons
    x0 = lo + (hi - lo) * torch.rand(B, n0, generator=g, dtype=torch.float64)
    zs = _pre_activations(chain, x0)
    splits = []
    for k in range(len(chain.weights) - 1):
        pick = torch.rand(zs[k].shape, generator=g) < 0.4
        splits.append(torch.where(pick, torch.sign(zs[k]), 0).to(torch.int8))
    bounds, empty = layer_bounds(chain, lo, hi, splits)
    assert not empty.any()
    pts = _feasible_points(chain, lo, hi, splits, seed=seed)
    for b in range(B):
        zp = _pre_activations(chain, pts[b])
        for k, (l, u) in enumerate(bounds):
            assert bool((zp[k] >= l[b] - 1e-9).all() and (zp[k] <= u[b] + 1e-9).all()), (b, k)
    for K in range(1, len(chain.weights)):
        S = 3
        lam = torch.randn(B, S, chain.widths[K], generator=g, dtype=torch.float64)
        for trial in range(5):
            alphas = [torch.rand(B, S, n, generator=g, dtype=torch.float64) for n in chain.widths[:K]]
            scale = 10.0 ** (trial - 1)
            betas = [scale * torch.rand(B, S, n, generator=g, dtype=torch.float64) for n in chain.widths[:K]]
            if trial == 4:  # out-of-range arguments: slopes outside [0, 1], negative multipliers
                alphas = [3 * a - 1 for a in alphas]
                betas = [-b for b in betas]
            lb, _ = backward(chain, K, lam, lo, hi, bounds, alphas, betas, splits)
            for b in range(B):
                if len(pts[b]) == 0:
                    continue
                val = _pre_activations(chain, pts[b])[K] @ lam[b].T  # (n, S)
                assert bool((val.min(0).values >= lb[b] - 1e-8).all()), (K, trial, b)


@pytest.mark.parametrize("seed", range(6))
def test_optimised_bounds_are_sound_and_no_looser_than_crown(seed):
    chain, lo, hi = _chain_and_boxes(seed, 3)
    splits = [torch.zeros(3, n, dtype=torch.int8) for n in chain.widths[:-1]]
    x0 = (lo + hi) / 2
    zs = _pre_activations(chain, x0)
    if splits:
        splits[0] = torch.sign(zs[0]).to(torch.int8)  # the centre's side of every first-layer neuron
    bounds, _ = layer_bounds(chain, lo, hi, splits)
    K = len(chain.weights) - 1
    lam = torch.eye(chain.widths[-1], dtype=torch.float64)[None]
    crown, _ = backward(chain, K, lam, lo, hi, bounds)
    best, _ = optimise(chain, K, lam, lo, hi, bounds, splits, iters=30, stop_at=None)
    assert bool((best >= crown - 1e-12).all())
    pts = _feasible_points(chain, lo, hi, splits, seed=seed)
    for b in range(3):
        if len(pts[b]):
            assert bool((chain(pts[b]).min(0).values >= best[b] - 1e-8).all())


@pytest.mark.parametrize("seed", range(6))
def test_forward_bounds_contain_sampled_points(seed):
    chain, lo, hi = _chain_and_boxes(seed, 5)
    g = torch.Generator().manual_seed(seed)
    n0 = lo.shape[1]
    fb = forward_bounds(chain, lo, hi)
    x = lo[:, None] + (hi - lo)[:, None] * torch.rand(5, 500, n0, generator=g, dtype=torch.float64)
    for b in range(5):
        zs = _pre_activations(chain, x[b])
        for k, (l, u) in enumerate(fb):
            assert bool((zs[k] >= l[b] - 1e-9).all() and (zs[k] <= u[b] + 1e-9).all())


def _truth(chain, lo, hi, n=200000, seed=0):
    """The minimum over dense samples of the worst margin (an upper bound on the true minimum)."""
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, len(lo), generator=g, dtype=torch.float64)
    m = chain(x).amax(1)
    return float(m.min()), x[int(m.argmin())]


def _shifted(chain: Chain, lo, hi, shift: float) -> Chain:
    """The chain with its margins shifted so that the sampled minimum lies at ``shift``."""
    t, _ = _truth(chain, lo, hi)
    return Chain(chain.weights, chain.biases[:-1] + [chain.biases[-1] - t + shift])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("search", ["input", "relu"])
def test_searches_agree_with_known_truth(seed, search):
    """Margins shifted so that the sampled minimum is -0.05 (sat: a witness must come back) or
    the exact MILP minimum is +0.05 (unsat: must be proved)."""
    chain = _random_chain(seed)
    n0 = chain.weights[0].shape[1]
    lo, hi = -torch.ones(n0, dtype=torch.float64), torch.ones(n0, dtype=torch.float64)
    run = input_bab if search == "input" else _relu_search

    def check(x):
        return x.clone() if bool((chain_s(x[None]).amax(1) <= 0).all()) else None

    chain_s = _shifted(chain, lo, hi, -0.05)
    out = run(chain_s, lo, hi, check, time.monotonic() + 30)
    assert out.status == "sat"
    assert bool((out.witness >= lo).all() and (out.witness <= hi).all())
    assert float(chain_s(out.witness[None]).amax()) <= 0
    # unsat: shift by the exact minimum (MILP over the whole box) plus a margin
    bounds, _ = layer_bounds(chain, lo[None], hi[None])
    exact = milp_min(chain, lo, hi, bounds)
    chain_u = Chain(chain.weights, chain.biases[:-1] + [chain.biases[-1] - exact + 0.05])
    chain_s = chain_u
    count_from_zero()
    out = run(chain_u, lo, hi, check, time.monotonic() + 30)
    assert out.status == "unsat", out
    # every bounded sub-domain is counted, also where a deadline's exception ends the search
    assert out.domains >= 1 and bounded_so_far() == out.domains, (out.domains, bounded_so_far())


def input_bab(chain: Chain, lo, hi, check, deadline, every: bool = False) -> Outcome:
    """The one input search on a chain whose outputs are the margins."""
    S = chain.widths[-1]
    bound, margins = chain_boxes(chain, torch.eye(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64), every)
    return input_search(bound, margins, lo, hi, check, deadline, every=every)


def _relu_search(chain: Chain, lo, hi, check, deadline) -> Outcome:
    """The one ReLU search on a chain whose outputs are the margins (one disjunct, every row)."""
    from boundflow.onnx.vnnlib import Disjunct

    S = chain.widths[-1]
    dj = Disjunct(lo, hi, torch.eye(S, dtype=torch.float64), torch.zeros(S, dtype=torch.float64))
    st, n, w = relu_search(chain_models(chain), [dj], deadline, lambda x, _dj: check(x))
    return Outcome(st, w, n)


def milp_leaf(chain: Chain, lo, hi, bounds, i, deadline, time_limit, check) -> Outcome:
    """The exact leaf (:func:`boundflow.verify.leaf.decide`) on sub-domain ``i`` of a chain whose
    outputs are the margins, with its layer bounds as node ranges."""
    g, names = chain.graph()
    ranges = {name: (l[i], u[i]) for name, (l, u) in zip(names, bounds, strict=True)}
    C = torch.eye(chain.widths[-1], dtype=torch.float64)
    st, w = decide(g, lo[None], hi[None], C, None, ranges, deadline, time_limit, check)
    return Outcome(st, w)


@pytest.mark.parametrize("seed", range(6))
def test_milp_leaf_decides_both_sides_of_the_minimum(seed):
    """The MILP's minimum is below every sampled value and close to the sampled minimum; with the
    margins shifted 0.02 above it the leaf answers ``unsat``, 0.02 below it ``sat`` (a witness)."""
    chain = _random_chain(seed)
    n0 = chain.weights[0].shape[1]
    lo, hi = -torch.ones(n0, dtype=torch.float64), torch.ones(n0, dtype=torch.float64)
    bounds, _ = layer_bounds(chain, lo[None], hi[None])
    exact = milp_min(chain, lo, hi, bounds)
    sampled, _ = _truth(chain, lo, hi)
    assert exact <= sampled + 1e-9  # the MILP's minimum is no larger than any sampled value
    assert sampled - exact < 0.05 * (1 + abs(exact))  # and dense sampling comes close to it
    for shift, want in ((0.02, "unsat"), (-0.02, "sat")):
        c2 = Chain(chain.weights, chain.biases[:-1] + [chain.biases[-1] - exact + shift])

        def check(x, c2=c2):
            return x.clone() if float(c2(x[None]).amax()) <= 0 else None

        out = milp_leaf(c2, lo, hi, bounds, 0, time.monotonic() + 30, 30, check)
        assert out.status == want


def test_milp_leaf_answers_unknown_on_infinite_bounds():
    """A big-M program needs finite bounds: an unbounded input leaves the leaf ``unknown``; an
    infinite node range is only a free side (the sound bounds keep the program finite)."""
    chain = _random_chain(0)
    n0 = chain.weights[0].shape[1]
    lo, hi = -torch.ones(n0, dtype=torch.float64), torch.ones(n0, dtype=torch.float64)
    bounds, _ = layer_bounds(chain, lo[None], hi[None])
    lo_inf = lo.clone()
    lo_inf[0] = -float("inf")
    out = milp_leaf(chain, lo_inf, hi, bounds, 0, time.monotonic() + 10, 10, lambda x: None)
    assert out.status == "unknown"
    b2 = [(l.clone(), u.clone()) for l, u in bounds]
    b2[0][1][0, 0] = float("inf")
    c_low = Chain(chain.weights, chain.biases[:-1] + [chain.biases[-1] - milp_min(chain, lo, hi, bounds) + 0.02])
    assert milp_leaf(c_low, lo, hi, b2, 0, time.monotonic() + 10, 10, lambda x: None).status == "unsat"


def test_milp_leaf_answers_unsat_on_contradicting_ranges():
    """Splits that contradict the sound bounds make the sub-domain empty: ``unsat`` whatever the
    margins (here they are <= 0 everywhere)."""
    chain = _random_chain(1)
    n0 = chain.weights[0].shape[1]
    lo, hi = -torch.ones(n0, dtype=torch.float64), torch.ones(n0, dtype=torch.float64)
    bounds, _ = layer_bounds(chain, lo[None], hi[None])
    unsafe = Chain(chain.weights, chain.biases[:-1] + [chain.biases[-1] - 1e6])
    b2 = [(l.clone(), u.clone()) for l, u in bounds]
    u0 = float(bounds[0][1][0, 0])
    b2[0][0][0, 0] = u0 + 1.0  # the neuron above its own sound upper bound: no such point
    assert milp_leaf(unsafe, lo, hi, b2, 0, time.monotonic() + 10, 10, lambda x: x).status == "unsat"
    assert milp_leaf(unsafe, lo, hi, bounds, 0, time.monotonic() + 10, 10, lambda x: x).status == "sat"


def _row(chain: Chain, k: int) -> Chain:
    """The chain with only output row ``k``."""
    return Chain(chain.weights[:-1] + [chain.weights[-1][k : k + 1]], chain.biases[:-1] + [chain.biases[-1][k : k + 1]])


@pytest.mark.parametrize("seed", range(6))
def test_every_row_search_agrees_with_each_rows_exact_minimum(seed):
    """Rows as separate disjuncts on one box (input_search(every=True)): unsat when every row's
    exact minimum is above 0, sat (with a point where that row is <= 0) when one row's is below."""
    g = torch.Generator().manual_seed(50 + seed)
    chain = _random_chain(seed)
    S = 3
    w_last = torch.randn(S, chain.weights[-1].shape[1], generator=g, dtype=torch.float64)
    chain = Chain(chain.weights[:-1] + [w_last], chain.biases[:-1] + [torch.zeros(S, dtype=torch.float64)])
    n0 = chain.weights[0].shape[1]
    lo, hi = -torch.ones(n0, dtype=torch.float64), torch.ones(n0, dtype=torch.float64)
    bounds, _ = layer_bounds(chain, lo[None], hi[None])
    exact = torch.tensor([milp_min(_row(chain, k), lo, hi, bounds) for k in range(S)], dtype=torch.float64)

    def shifted(shift):
        return Chain(chain.weights, chain.biases[:-1] + [chain.biases[-1] - exact + shift])

    def check_for(c):
        return lambda x: x.clone() if bool((c(x[None]) <= 0).any()) else None

    safe = shifted(torch.full((S,), 0.05, dtype=torch.float64))
    out = input_bab(safe, lo, hi, check_for(safe), time.monotonic() + 30, every=True)
    assert out.status == "unsat", out
    bad = int(torch.randint(0, S, (1,), generator=g))
    shift = torch.full((S,), 0.05, dtype=torch.float64)
    shift[bad] = -0.05
    unsafe = shifted(shift)
    out = input_bab(unsafe, lo, hi, check_for(unsafe), time.monotonic() + 30, every=True)
    assert out.status == "sat", out
    assert float(unsafe(out.witness[None])[0, bad]) <= 0
