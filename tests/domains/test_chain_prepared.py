"""The chain's dense specialisation answers the linear domain's branching query soundly.

Over random chains (depth, widths, biases), random boxes, random split patterns (any neuron of
any layer fixed either way, contradictory ones included), random ``known`` bounds (a parent's),
random slopes and multipliers (outside [0, 1] and negative too: the bounds clip them) and the
look-ahead mode: every sampled point of a sub-domain (in its box, every split sign holding)
has margins above the lower bounds, inside the reported bounds of every split node; a
sub-domain reported empty holds no sampled point.  And it agrees with the general
``LinearPrepared`` on what it is for: at the root both are sound and the chain's alpha-CROWN is
no looser than the graph's CROWN.
"""

from __future__ import annotations

import pytest
import torch

import boundflow as bf
from boundflow.domains.linear.chain import Chain
from boundflow.domains.linear.chain_prepared import ChainPrepared
from boundflow.specs import Box, OutputSpec


def _random_chain(seed: int) -> Chain:
    g = torch.Generator().manual_seed(seed)
    depth = int(torch.randint(1, 4, (1,), generator=g))
    widths = [int(torch.randint(2, 6, (1,), generator=g))]
    widths += [int(torch.randint(2, 9, (1,), generator=g)) for _ in range(depth)]
    widths.append(int(torch.randint(1, 4, (1,), generator=g)))
    ws = [torch.randn(widths[k + 1], widths[k], generator=g, dtype=torch.float64) for k in range(len(widths) - 1)]
    bs = [0.5 * torch.randn(widths[k + 1], generator=g, dtype=torch.float64) for k in range(len(widths) - 1)]
    return Chain(ws, bs)


def _pre_activations(chain: Chain, x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for k, (w, b) in enumerate(zip(chain.weights[:-1], chain.biases[:-1], strict=True)):
        x = (x.clamp(min=0) if k else x) @ w.T + b
        out.append(x)
    return out


def _samples(lo, hi, n, g):
    """Random points, corners and centres of a box."""
    d = lo.shape[0]
    x = lo + (hi - lo) * torch.rand(n, d, generator=g, dtype=torch.float64)
    corners = torch.where(torch.rand(n, d, generator=g) < 0.5, lo, hi)
    return torch.cat([x, corners, ((lo + hi) / 2)[None]])


def _check(chain, C, d, res, lo, hi, splits, names, g, n=3000):
    B = lo.shape[0]
    for i in range(B):
        x = _samples(lo[i], hi[i], n, g)
        zs = _pre_activations(chain, x)
        inside = torch.ones(len(x), dtype=torch.bool)
        for name, z in zip(names, zs, strict=True):
            if splits and name in splits:
                a, b = splits[name][0][i], splits[name][1][i]
                inside &= ((z >= a) & (z <= b)).all(1)
        if not inside.any():
            continue
        assert not bool(res.empty[i]), "a sub-domain with points was reported empty"
        m = chain(x[inside]) @ C.T - d
        assert bool((m >= res.lower[i] - 1e-9).all()), (m.min(0).values, res.lower[i])
        for name, z in zip(names, zs, strict=True):
            if name in res.intermediate:
                l, u = res.intermediate[name]
                zi = z[inside]
                assert bool((zi >= l[i] - 1e-9).all() and (zi <= u[i] + 1e-9).all())


def _random_splits(chain, names, B, g, p=0.3):
    """Per layer ``(lower, upper)``: each neuron free, active ``[0, inf)`` or inactive ``(-inf, 0]``."""
    out = {}
    for k, name in enumerate(names):
        n = chain.widths[k]
        r = torch.rand(B, n, generator=g)
        lo = torch.where(r < p / 2, 0.0, -float("inf")).to(torch.float64)
        hi = torch.where((r >= p / 2) & (r < p), 0.0, float("inf")).to(torch.float64)
        out[name] = (lo, hi)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_chain_query_is_sound_for_any_splits_params_and_known_bounds(seed):
    g = torch.Generator().manual_seed(100 + seed)
    chain = _random_chain(seed)
    n0, S = chain.weights[0].shape[1], chain.widths[-1]
    C = torch.randn(S, S, generator=g, dtype=torch.float64)
    d = 0.3 * torch.randn(S, generator=g, dtype=torch.float64)
    B = 5
    c = torch.randn(B, n0, generator=g, dtype=torch.float64)
    r = 0.05 + torch.rand(B, n0, generator=g, dtype=torch.float64)
    lo, hi = c - r, c + r
    root = ChainPrepared(chain, iterations=int(torch.randint(0, 6, (1,), generator=g)), intermediate=3)
    step = ChainPrepared(chain, iterations=int(torch.randint(0, 6, (1,), generator=g)))
    names = root.split_nodes(B, lo[0])
    assert len(names) == len(chain.weights) - 1
    inf = torch.full((B, max(chain.widths)), float("inf"), dtype=torch.float64)
    free = {n: (-inf[:, :w], inf[:, :w]) for n, w in zip(names, chain.widths, strict=False)}
    res0 = root.bounds(Box(lo, hi), OutputSpec(C, d), splits=free)
    _check(chain, C, d, res0, lo, hi, None, names, g)
    splits = _random_splits(chain, names, B, g)
    # warm parameters: anything (the bounds clip slopes to [0, 1] and multipliers to >= 0)
    warm = {
        "alpha": {n: 3 * torch.randn_like(a) - 1 for n, a in res0.params["alpha"].items()},
        "beta": {n: torch.randn(S, chain.widths[k], B, generator=g, dtype=torch.float64) for k, n in enumerate(names)},
    }
    known = {n: res0.intermediate[n] for n in names}
    for kn in (None, known):
        res = step.bounds(Box(lo, hi), OutputSpec(C, d), splits=splits, known=kn, warm=warm)
        _check(chain, C, d, res, lo, hi, splits, names, g)
        assert set(res.scores) == set(names)
        for n in names:  # a score only where the neuron is unstable
            l, u = res.intermediate[n]
            assert bool((res.scores[n][(l >= 0) | (u <= 0)] == 0).all())
    look = step.bounds(Box(lo, hi), OutputSpec(C, d), splits=splits, known=known, warm=warm, lookahead=True)
    look.intermediate = {}
    _check(chain, C, d, look, lo, hi, splits, names, g)


@pytest.mark.parametrize("seed", range(4))
def test_chain_root_is_no_looser_than_the_graphs_crown(seed):
    g = torch.Generator().manual_seed(200 + seed)
    chain = _random_chain(seed)
    n0, S = chain.weights[0].shape[1], chain.widths[-1]
    C = torch.eye(S, dtype=torch.float64)
    c = torch.randn(1, n0, generator=g, dtype=torch.float64)
    lo, hi = c - 0.5, c + 0.5
    ours = ChainPrepared(chain, iterations=20, intermediate=20).bounds(Box(lo, hi), OutputSpec(C))
    crown = bf.prepare(chain.module(), "crown").bounds(Box(lo, hi), OutputSpec(C))
    assert bool((ours.lower >= crown.lower - 1e-9).all())
    x = _samples(lo[0], hi[0], 2000, g)
    assert bool((chain(x) >= ours.lower[0] - 1e-9).all())


def test_lookahead_needs_known_bounds():
    chain = _random_chain(0)
    n0, S = chain.weights[0].shape[1], chain.widths[-1]
    lo = torch.zeros(1, n0, dtype=torch.float64)
    with pytest.raises(ValueError, match="lookahead needs the known bounds"):
        ChainPrepared(chain).bounds(Box(lo, lo + 1), OutputSpec(torch.eye(S, dtype=torch.float64)), lookahead=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("refine_width", [512, 0])
def test_box_bounds_are_sound_with_and_without_per_neuron_refinement(seed, refine_width, monkeypatch):
    """``ChainPrepared.boxes`` (input splitting's query) over random chains and boxes: every
    sampled point's margins lie above the lower bounds, a box called proved has none <= 0 in
    the deciding sense, and the corner candidates lie in their box; with the per-neuron
    back-substitution (narrow chains) and without it (``BOX_REFINE_WIDTH = 0``: what chains
    wider than 512 get, forward symbolic and interval bounds alone)."""
    import boundflow.domains.linear.chain_prepared as cp

    monkeypatch.setattr(cp, "BOX_REFINE_WIDTH", refine_width)
    chain = _random_chain(seed)
    g = torch.Generator().manual_seed(100 + seed)
    n0, S = chain.weights[0].shape[1], chain.widths[-1]
    C = torch.randn(2, S, generator=g, dtype=torch.float64)
    d = torch.randn(2, generator=g, dtype=torch.float64)
    B = 5
    lo = torch.randn(B, n0, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(B, n0, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.5, 0.1, 0.01, 1.0])[:, None]
    prepared = ChainPrepared(chain, iterations=5)
    for every in (False, True):
        res = prepared.boxes(lo, hi, OutputSpec(C, d), every=every, alpha_iters=5)
        for i in range(B):
            x = _samples(lo[i], hi[i], 2000, g)
            m = chain(x) @ C.T - d
            assert bool((m >= res.lower[i] - 1e-9).all()), (m.min(0).values, res.lower[i])
            if bool(res.proved[i]):  # proved: no point has every (some, with ``every``) margin <= 0
                bad = (m <= 0).any(1) if every else (m <= 0).all(1)
                assert not bool(bad.any())
            pts = res.points[i]
            assert bool(((pts >= lo[i] - 1e-12) & (pts <= hi[i] + 1e-12)).all())
