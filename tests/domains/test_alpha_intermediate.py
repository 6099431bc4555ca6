"""alpha-CROWN on intermediate bounds (:func:`boundflow.domains.linear.alpha.optimise_intermediate`):
over random MLPs, CNNs and residual CNNs and random boxes, the optimised bounds of every ReLU
input lie inside CROWN's (never looser), somewhere strictly inside, and contain the node's
values at sampled, corner and attacked points; the final bounds built on them contain the
outputs; a deadline in the past changes nothing (no data needed)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import fx, nn

from boundflow.domains.linear.alpha import alpha_crown, optimise_intermediate
from boundflow.domains.linear.crown import crown, prepare
from boundflow.graph import capture

D = torch.float64


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c * 36, 4)

    def forward(self, x):
        z = torch.relu(self.a(x))
        return self.fc(torch.relu(self.b(z) + z).flatten(1))


def _net(kind: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    w = int(torch.randint(4, 12, (1,), generator=g))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(6, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 3)).to(D), (6,)
    if kind == "cnn":
        c = int(torch.randint(2, 4, (1,), generator=g))
        net = nn.Sequential(
            nn.Conv2d(2, c, 3), nn.ReLU(), nn.Flatten(), nn.Linear(c * 16, w), nn.ReLU(), nn.Linear(w, 3)
        )
        return net.to(D), (2, 6, 6)
    return _Residual(int(torch.randint(2, 4, (1,), generator=g))).to(D), (2, 6, 6)


def _values(model, x: torch.Tensor) -> dict:
    """Every node's value at the batch ``x``, by node name (the graph captured at this batch
    size has the same names as the one bounded)."""
    g = capture(model, x.detach())
    env = {}

    class Rec(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            env[n.name] = out
            return out

    Rec(g.gm).run(x, *g.params)
    return env


@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
@pytest.mark.parametrize("seed", range(3))
def test_optimised_intermediate_bounds_are_sound_and_never_looser(kind, seed):
    model, shape = _net(kind, seed)
    gen = torch.Generator().manual_seed(seed + 7)
    centre = torch.randn(1, *shape, dtype=D, generator=gen)
    eps = 0.3 + 0.5 * float(torch.rand(1, generator=gen))
    lo, hi = centre - eps, centre + eps
    g = capture(model, centre)
    state = prepare(g, lo, hi)
    relu_in = [
        n.args[0] for n in g.gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.relu.default
    ]
    before = {n: (state.lower[n].clone(), state.upper[n].clone()) for n in relu_in}
    n_opt = optimise_intermediate(state, iterations=15)
    tighter = False
    for n in relu_in:
        l0, u0 = before[n]
        l1, u1 = state.lower[n], state.upper[n]
        assert bool((l1 >= l0).all() and (u1 <= u0).all()), n.name
        tighter |= bool((l1 > l0 + 1e-9).any() or (u1 < u0 - 1e-9).any())
    # points: random, corners of random sub-boxes, and signed-gradient steps on each neuron's extremes
    x = lo + (hi - lo) * torch.rand(400, *shape, dtype=D, generator=gen)
    x = torch.cat([x, torch.where(torch.rand(200, *shape, generator=gen) < 0.5, lo, hi)])
    xs = x.clone().requires_grad_(True)
    vals = _values(model, xs)
    total = sum(vals[n.name].sum() * (1 if i % 2 else -1) for i, n in enumerate(relu_in))
    total.backward()
    for step in (xs.grad.sign(), -xs.grad.sign()):
        x = torch.cat([x, torch.minimum(torch.maximum(x[:600] + eps * step[:600], lo), hi)])
    with torch.no_grad():
        vals = _values(model, x)
    for n in relu_in:
        v = vals[n.name]
        assert bool((v >= state.lower[n] - 1e-9).all() and (v <= state.upper[n] + 1e-9).all()), n.name
    lb, ub, _ = crown(g, lo, hi, state=state)
    with torch.no_grad():
        y = model(x)
    assert bool((y >= lb - 1e-9).all() and (y <= ub + 1e-9).all())
    if n_opt:
        assert tighter or kind == "mlp"  # something moved (a 2-layer MLP's first layer is exact)


def test_optimised_intermediate_bounds_tighten_and_a_past_deadline_changes_nothing():
    model, shape = _net("residual", 11)
    centre = torch.randn(1, *shape, dtype=D, generator=torch.Generator().manual_seed(1))
    lo, hi = centre - 0.6, centre + 0.6
    g = capture(model, centre)
    C = torch.eye(4, dtype=D)
    lb0, _ = alpha_crown(g, lo, hi, C, iterations=10, sides=("lower",))
    lb1, _ = alpha_crown(g, lo, hi, C, iterations=10, sides=("lower",), intermediate=10)
    assert bool((lb1 >= lb0 - 1e-9).all()) and bool((lb1 > lb0 + 1e-6).any())
    state = prepare(g, lo, hi)
    before = {n: t.clone() for n, t in state.lower.items()}
    assert optimise_intermediate(state, iterations=10, stop=time.monotonic() - 1) == 0
    assert all(torch.equal(before[n], state.lower[n]) for n in before)
