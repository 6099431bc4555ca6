"""Exact leaves from the one network encoder (:func:`boundflow.encode.network.margin_program`,
:func:`boundflow.verify.leaf.decide`) on general graphs, over random architectures and
sub-domains: the program's minimum is below every attained margin of the sub-domain (sampled
and attacked points), a point of the sub-domain that violates the property is found and
confirmed, contradicting splits make the sub-domain empty, and relaxed activations make the
program inexact (no data needed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from boundflow.encode.network import EmptyDomain, margin_program
from boundflow.graph import capture
from boundflow.verify.leaf import decide
from solvers.backends import make_solver


def _net(seed: int, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """A random conv net with a residual add on a flat 1x5x5 input (random channel counts)."""
    g = torch.Generator().manual_seed(seed)
    c = int(torch.randint(1, 4, (1,), generator=g))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, c, 3, padding=1)
            self.c2 = nn.Conv2d(c, c, 3, padding=1)
            self.a1, self.a2 = act(), act()
            self.fc = nn.Linear(c * 25, 3)

        def forward(self, x):
            z = self.c1(x.reshape(-1, 1, 5, 5))
            h = self.a1(z)
            return self.fc(self.a2(self.c2(h) + z).flatten(1))

    torch.manual_seed(seed)
    return Net().double().eval()


def _split_names(g, kinds=(torch.ops.aten.relu.default,)):
    return [n.args[0].name for n in g.gm.graph.nodes if n.op == "call_function" and n.target in kinds]


def _pattern_ranges(model, g, x0: torch.Tensor) -> dict:
    """Every ReLU input fixed to its sign at ``x0``: the ranges of that activation region (the
    model's activation inputs, recorded by hooks, in the graph's ReLU order)."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _, a: seen.append(a[0].detach())) for m in (model.a1, model.a2)]
    with torch.no_grad():
        model(x0)
    for h in hooks:
        h.remove()
    ranges = {}
    for name, v in zip(_split_names(g), seen, strict=True):
        v = v[0]
        inf = torch.full_like(v, float("inf"))
        ranges[name] = (torch.where(v >= 0, 0.0, -inf), torch.where(v >= 0, inf, 0.0))
    return ranges


def _region(net_seed: int, seed: int, half: float):
    """A random net, a box of half-width ``half`` around a random centre, its captured graph, a
    random point ``x0`` of the box and the ranges of ``x0``'s activation region."""
    model = _net(net_seed)
    gen = torch.Generator().manual_seed(seed)
    centre = torch.rand(1, 25, generator=gen, dtype=torch.float64) * 2 - 1
    lo, hi = centre - half, centre + half
    g = capture(model, centre)
    x0 = lo + (hi - lo) * torch.rand(1, 25, generator=gen, dtype=torch.float64)
    return model, gen, lo, hi, g, x0, _pattern_ranges(model, g, x0)


def _min_t(p, t) -> float:
    """The solver's rigorous lower bound of ``min t``."""
    s = make_solver(p, "milp")
    c = np.zeros(p.n_vars)
    c[t] = 1
    return float(s.minimize(c, 30).bound)


@pytest.mark.parametrize("seed", range(5))
def test_leaf_minimum_is_below_every_point_of_its_region(seed):
    """Random net, box, and the activation region of a random point: the program's minimum of
    the worst margin is <= the worst margin at every sampled and attacked point of the region."""
    model, gen, lo, hi, g, x0, ranges = _region(seed, seed, 0.15)
    C = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    d = torch.randn(2, generator=gen, dtype=torch.float64) * 0.1
    p, x, t, exact = margin_program(g, lo, hi, C, d, ranges)
    assert exact  # ReLU, conv and add only
    opt = _min_t(p, t)
    pts = lo + (hi - lo) * torch.rand(4000, 25, generator=gen, dtype=torch.float64)
    pts = torch.cat([pts, x0])
    # keep the points of the region: same sign at every ReLU input
    keep = torch.ones(len(pts), dtype=torch.bool)
    for i in range(len(pts)):
        r = _pattern_ranges(model, g, pts[i : i + 1])
        keep[i] = all(torch.equal(r[k][0], ranges[k][0]) for k in ranges)
    assert keep[-1]
    pts = pts[keep]
    # attack inside the region too: gradient steps on the worst margin, kept when still inside
    y = pts.clone().requires_grad_(True)
    worst = (model(y) @ C.T - d).amax(1)
    worst.sum().backward()
    stepped = torch.minimum(torch.maximum(pts - 0.02 * y.grad.sign(), lo), hi).detach()
    inside = torch.tensor([
        all(torch.equal(_pattern_ranges(model, g, s[None])[k][0], ranges[k][0]) for k in ranges) for s in stepped
    ])  # fmt: skip
    pts = torch.cat([pts, stepped[inside]])
    with torch.no_grad():
        margins = (model(pts) @ C.T - d).amax(1)
    assert opt <= float(margins.min()) + 1e-7


@pytest.mark.parametrize("seed", range(4))
def test_leaf_finds_a_violating_point_of_its_region_and_proves_above_the_minimum(seed):
    """``d`` just above the region's value at ``x0``: the leaf answers ``sat`` with a confirmed
    witness; ``d`` below the program's minimum: ``unsat``."""
    model, gen, lo, hi, g, x0, ranges = _region(seed + 10, seed, 0.1)
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        y0 = float((model(x0) @ C.T)[0, 0])

    def check(x, d):
        with torch.no_grad():
            m = model(x.reshape(1, -1)) @ C.T - d
        return x.clone() if float(m.amax()) <= 0 and bool(((x >= lo[0]) & (x <= hi[0])).all()) else None

    d = torch.tensor([y0 + 0.01], dtype=torch.float64)
    st, w = decide(g, lo, hi, C, d, ranges, time.monotonic() + 30, 30, lambda x: check(x, d))
    assert st == "sat" and w is not None
    opt = _min_t(*margin_program(g, lo, hi, C, torch.zeros(1, dtype=torch.float64), ranges)[::2])
    d = torch.tensor([opt - 0.01], dtype=torch.float64)
    st, _ = decide(g, lo, hi, C, d, ranges, time.monotonic() + 30, 30, lambda x: check(x, d))
    assert st == "unsat"


def test_contradicting_ranges_are_an_empty_sub_domain():
    model = _net(3)
    centre = torch.zeros(1, 25, dtype=torch.float64)
    g = capture(model, centre)
    name = _split_names(g)[0]
    shape = next(n for n in g.gm.graph.nodes if n.name == name).meta["val"].shape[1:]
    big = torch.full(shape, 1e6, dtype=torch.float64)
    ranges = {name: (big, torch.full(shape, float("inf"), dtype=torch.float64))}
    with pytest.raises(EmptyDomain):
        margin_program(g, centre - 0.1, centre + 0.1, torch.eye(3, dtype=torch.float64), None, ranges)
    st, _ = decide(g, centre - 0.1, centre + 0.1, torch.eye(3, dtype=torch.float64), None, ranges,
                   time.monotonic() + 10, 10, lambda x: x)  # fmt: skip
    assert st == "unsat"


def test_a_relaxed_activation_makes_the_program_inexact_but_still_a_bound():
    model = _net(4, nn.Sigmoid)
    gen = torch.Generator().manual_seed(4)
    centre = torch.rand(1, 25, generator=gen, dtype=torch.float64)
    lo, hi = centre - 0.2, centre + 0.2
    g = capture(model, centre)
    C = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    p, x, t, exact = margin_program(g, lo, hi, C, None, {})
    assert not exact
    pts = lo + (hi - lo) * torch.rand(3000, 25, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        m = (model(pts) @ C.T).amax(1)
    assert _min_t(p, t) <= float(m.min()) + 1e-7
