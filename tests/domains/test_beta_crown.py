"""beta-CROWN on the general graph: split constraints with optimised multipliers, through the
prepared model's ``splits=`` (``AlphaCrownDomain``).  Containment on random architectures (MLPs,
CNNs with pooling, batch norm, residual paths, sigmoids), random split sets (ReLU signs and
two-sided ranges on any activation's input) and random *and* optimised multipliers, against
sampled and attacked points of each sub-domain."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import boundflow as bf
from boundflow.domains.linear.alpha import _final
from boundflow.domains.linear.beta import split_constraints
from boundflow.domains.linear.crown import prepare
from boundflow.domains.linear.domain import AlphaCrownDomain

D = torch.float64
ACT_TARGETS = (torch.ops.aten.relu.default, torch.ops.aten.sigmoid.default)


class _Res(nn.Module):
    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x):
        return x + self.f(x)


def _random_net(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    torch.manual_seed(seed)
    if seed % 2 == 0:  # an MLP, sometimes with a residual block and a sigmoid
        n = pick([2, 3, 5])
        w = pick([6, 10])
        layers = [nn.Linear(n, w), nn.ReLU()]
        for _ in range(pick([1, 2])):
            kind = pick(["linear", "res", "sig"])
            if kind == "linear":
                layers += [nn.Linear(w, w), nn.ReLU()]
            elif kind == "res":
                layers += [_Res(nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))), nn.ReLU()]
            else:
                layers += [nn.Linear(w, w), nn.Sigmoid(), nn.Linear(w, w), nn.ReLU()]
        layers.append(nn.Linear(w, 3))
        return nn.Sequential(*layers).to(D).eval(), (n,)
    c, h = pick([1, 2]), pick([6, 7])
    layers = [nn.Conv2d(c, 3, 3, padding=pick([0, 1])), nn.ReLU()]
    kind = pick(["pool", "bn", "res"])
    if kind == "pool":
        layers += [nn.MaxPool2d(2)]
    elif kind == "bn":
        bn = nn.BatchNorm2d(3)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        layers += [nn.Conv2d(3, 3, 3, padding=1), bn, nn.ReLU()]
    else:
        layers += [_Res(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 1))), nn.ReLU()]
    layers += [nn.Flatten()]
    with torch.no_grad():
        n_flat = nn.Sequential(*layers).to(D)(torch.zeros(1, c, h, h, dtype=D)).shape[1]
    layers += [nn.Linear(n_flat, 8), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(D).eval(), (c, h, h)


def _node_values(prepared, like: torch.Tensor, points: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The values of the batch-1 graph's nodes ``names`` at ``points``, read from the graph
    captured for the points' batch (the same ops in the same order)."""
    g1 = prepared.graph(like)
    gn = prepared.graph(points)
    n1, nn_ = list(g1.gm.graph.nodes), list(gn.gm.graph.nodes)
    assert [n.target for n in n1] == [n.target for n in nn_]
    wanted = {nn_[i]: n.name for i, n in enumerate(n1) if n.name in names}
    out: dict[str, torch.Tensor] = {}

    class Rec(fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if n in wanted:
                out[wanted[n]] = v
            return v

    with torch.no_grad():
        Rec(gn.gm).run(points, *gn.params)
    return out


def _activation_inputs(prepared, like) -> list[tuple[str, bool]]:
    """``(name, is_relu)`` of every ReLU / sigmoid input node of the batch-1 graph."""
    g = prepared.graph(like)
    return [
        (n.args[0].name, n.target is torch.ops.aten.relu.default)
        for n in g.gm.graph.nodes
        if n.op == "call_function" and n.target in ACT_TARGETS
    ]


def _sub_domain(seed: int):
    """A network, its box, a split set that a reference point satisfies, and the feasible
    sampled and attacked points with their margins."""
    model, shape = _random_net(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    centre = torch.randn(1, *shape, generator=gen, dtype=D)
    radius = torch.rand(1, *shape, generator=gen, dtype=D) * 0.5 + 0.05
    lo, hi = centre - radius, centre + radius
    prepared = bf.prepare(model, "crown")
    acts = _activation_inputs(prepared, lo)
    names = [a for a, _ in acts]
    pts = lo + (hi - lo) * torch.rand(1500, *shape, generator=gen, dtype=D)
    vals = _node_values(prepared, lo, pts, names)
    ref = 0
    splits = {}
    for name, is_relu in acts:
        v = vals[name].reshape(len(pts), -1)
        o_lo = torch.full((1, v.shape[1]), -float("inf"), dtype=D)
        o_hi = torch.full((1, v.shape[1]), float("inf"), dtype=D)
        k = int(torch.randint(0, min(4, v.shape[1]) + 1, (1,), generator=gen))
        for j in torch.randperm(v.shape[1], generator=gen)[:k].tolist():
            r = float(v[ref, j])
            if is_relu and torch.rand(1, generator=gen) < 0.7:  # a ReLU sign split
                if r >= 0:
                    o_lo[0, j] = 0.0
                else:
                    o_hi[0, j] = 0.0
            else:  # a range split (GenBaB-style) around the reference value
                spread = float(v[:, j].std()) + 1e-6
                o_lo[0, j] = r - spread * float(torch.rand(1, generator=gen))
                o_hi[0, j] = r + spread * float(torch.rand(1, generator=gen))
        vshape = vals[name].shape[1:]
        splits[name] = (o_lo.reshape(1, *vshape), o_hi.reshape(1, *vshape))

    def feasible(x):
        vv = _node_values(prepared, lo, x, names)
        ok = torch.ones(len(x), dtype=torch.bool)
        for name, (o_lo, o_hi) in splits.items():
            z = vv[name].reshape(len(x), -1)
            ok &= ((z >= o_lo.reshape(1, -1)) & (z <= o_hi.reshape(1, -1))).all(1)
        return ok

    C = torch.randn(2, 3, generator=gen, dtype=D)
    ok = feasible(pts)
    assert ok[ref]
    x = pts[ok]
    # attacked points: signed-gradient steps from feasible points towards each row's extremes,
    # kept where they stay in the box and the sub-domain
    attacked = []
    for row in range(len(C)):
        for sgn in (1.0, -1.0):
            xa = x[:64].clone()
            for _ in range(10):
                xa.requires_grad_(True)
                (g,) = torch.autograd.grad((sgn * model(xa) @ C[row]).sum(), xa)
                xa = torch.minimum(torch.maximum(xa.detach() - 0.05 * radius * g.sign(), lo), hi)
            attacked.append(xa[feasible(xa)])
    x = torch.cat([x, *attacked])
    with torch.no_grad():
        margins = model(x) @ C.T
    return model, lo, hi, splits, C, margins


def _check(lb, ub, margins, what):
    tol = 1e-9 * (1 + margins.abs().max())
    assert bool((lb.reshape(-1) <= margins.min(0).values + tol).all()), f"{what}: lower bound above a value"
    assert bool((ub.reshape(-1) >= margins.max(0).values - tol).all()), f"{what}: upper bound below a value"


def test_beta_crown_contains_every_feasible_point_for_optimised_multipliers():
    for seed in range(8):
        model, lo, hi, splits, C, margins = _sub_domain(seed)
        dom = AlphaCrownDomain(iterations=15, lr_beta=float(torch.tensor([0.05, 0.5, 5.0])[seed % 3]))
        res = dom.prepare(model).bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits)
        assert not res.empty.any()
        _check(res.lower, res.upper, margins, f"seed {seed}")
        plain = bf.prepare(model, "crown").bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits)
        assert bool((res.lower >= plain.lower - 1e-9).all()) and bool((res.upper <= plain.upper + 1e-9).all())


def test_beta_crown_is_sound_for_any_multiplier_value():
    """Random, large multipliers straight into the final back-substitution: still bounds."""
    for seed in range(8):
        model, lo, hi, splits, C, margins = _sub_domain(seed)
        g = bf.prepare(model, "crown").graph((lo + hi) / 2)
        state = prepare(g, lo, hi, overrides=splits)
        constraints = split_constraints(state, splits)
        assert constraints
        out_node = next(n for n in g.gm.graph.nodes if n.op == "output").args[0]
        gen = torch.Generator().manual_seed(seed)
        for scale in (0.1, 3.0, 100.0):
            betas = [torch.rand((2, len(C), *c.lo.shape), generator=gen, dtype=D) * scale for c in constraints]
            # negative entries are clamped to zero, never used as they are
            betas = [torch.where(torch.rand(b.shape, generator=gen) < 0.2, -b, b) for b in betas]
            lb, _ = _final(state, g, out_node, lo, C, constraints, betas, "lower")
            _, ub = _final(state, g, out_node, lo, C, constraints, betas, "upper")
            _check(lb, ub, margins, f"seed {seed}, scale {scale}")


class _SplitVisible(nn.Module):
    """``y = 2h - x + 0.001 relu(h)`` with ``h = x``: on the sub-domain ``h >= 0`` the minimum is
    0, which only the split constraint's multiplier can show (the intervals give
    ``2 [0, 1] - [-1, 1]``, back-substitution ``x`` on a box that reaches ``x = -1``)."""

    def __init__(self):
        super().__init__()
        self.h = nn.Linear(1, 1)
        with torch.no_grad():
            self.h.weight.fill_(1.0)
            self.h.bias.zero_()

    def forward(self, x):
        h = self.h(x)
        return 2 * h - x + 0.001 * torch.relu(h)


def test_the_multipliers_tighten_what_the_intermediate_bounds_cannot():
    model = _SplitVisible().to(D)
    lo, hi = -torch.ones(1, 1, dtype=D), torch.ones(1, 1, dtype=D)
    prepared = AlphaCrownDomain(iterations=40, lr_beta=0.2).prepare(model)
    (name,) = prepared.split_nodes(1, lo[0])
    splits = {name: (torch.zeros(1, 1, dtype=D), torch.full((1, 1), float("inf"), dtype=D))}
    plain = bf.prepare(model, "crown").bounds(bf.Box(lo, hi), splits=splits)
    beta = prepared.bounds(bf.Box(lo, hi), splits=splits)
    assert float(plain.lower) < -0.9  # CROWN with the split in the intermediate bounds only
    assert -0.01 <= float(beta.lower) <= 0.0  # the true minimum is 0 (Adam ends near it)
    assert float(beta.upper) == float(plain.upper)  # both sides optimised, upper already exact


def test_lower_side_only_keeps_crowns_upper_bounds():
    model, lo, hi, splits, C, margins = _sub_domain(3)
    plain = bf.prepare(model, "crown").bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits)
    res = (
        AlphaCrownDomain(iterations=10, sides=("lower",))
        .prepare(model)
        .bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits)
    )
    torch.testing.assert_close(res.upper, plain.upper)
    assert bool((res.lower >= plain.lower - 1e-12).all())
    _check(res.lower, res.upper, margins, "lower side only")


def test_alpha_crown_refuses_unknown_sides():
    with pytest.raises(ValueError, match="sides"):
        AlphaCrownDomain(sides=("middle",))


def test_contradicting_splits_mark_the_sub_domain_empty_under_beta_crown():
    model = _SplitVisible().to(D)
    lo, hi = -torch.ones(1, 1, dtype=D), -0.5 * torch.ones(1, 1, dtype=D)
    prepared = AlphaCrownDomain(iterations=5).prepare(model)
    (name,) = prepared.split_nodes(1, lo[0])
    splits = {name: (torch.full((1, 1), 0.25, dtype=D), torch.full((1, 1), float("inf"), dtype=D))}
    assert prepared.bounds(bf.Box(lo, hi), splits=splits).empty.tolist() == [True]


def test_branching_scores_come_with_split_queries_and_only_on_unstable_neurons():
    model, lo, hi, splits, C, _ = _sub_domain(4)
    for domain in (bf.get_domain("crown"), AlphaCrownDomain(iterations=3, sides=("lower",))):
        res = domain.prepare(model).bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits)
        relu_inputs = domain.prepare(model).split_nodes(1, lo[0])
        # ReLU inputs and sigmoid inputs (ranges a search may bisect) are scored
        assert set(res.scores) == set(domain.prepare(model).split_nodes(1, lo[0], general=True))
        for name in set(res.scores) - set(relu_inputs):
            assert bool((res.scores[name] >= 0).all())
        for name in relu_inputs:
            score = res.scores[name]
            l, u = res.intermediate[name]
            assert score.shape == l.shape
            assert bool((score >= 0).all())
            assert bool((score[(l >= 0) | (u <= 0)] == 0).all())  # a neuron of known sign gains nothing
        assert any(bool((res.scores[n] > 0).any()) for n in relu_inputs)


def test_any_warm_start_is_sound_and_params_come_back_per_sample():
    """``warm=`` (a parent's slopes and multipliers in branch and bound) with random values of
    any size and sign: still bounds (slopes clamped to [0, 1], multipliers to >= 0)."""
    for seed in (0, 1, 2, 5):
        model, lo, hi, splits, C, margins = _sub_domain(seed)
        prepared = AlphaCrownDomain(iterations=3, sides=("lower",)).prepare(model)
        first = prepared.bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits)
        assert set(first.params) == {"alpha", "beta"} and first.params["beta"]
        for v in first.params["alpha"].values():
            assert v.shape[0] == 1 and bool(((v >= 0) & (v <= 1)).all())
        gen = torch.Generator().manual_seed(seed)
        warm = {
            kind: {k: (torch.rand(v.shape, generator=gen, dtype=D) - 0.3) * 50 for k, v in first.params[kind].items()}
            for kind in ("alpha", "beta")
        }
        res = prepared.bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits, warm=warm)
        _check(res.lower, res.upper, margins, f"seed {seed}, random warm start")
        again = prepared.bounds(bf.Box(lo, hi), bf.OutputSpec(C), splits=splits, warm=first.params)
        _check(again.lower, again.upper, margins, f"seed {seed}, warm start from its own params")


def test_search_rows_keep_and_stack_their_params():
    from boundflow.verify import search

    params = {"alpha": {"r": torch.rand(3, 4, dtype=D)}, "beta": {"z": torch.zeros(2, 1, 3, 4, dtype=D)}}
    params["beta"]["z"][0, 0, 1, 2] = 0.7
    rows = [search._row_params(params, i) for i in range(3)]
    assert rows[1]["beta"]["z"].is_sparse
    items = [search.SubDomain({}, None, r) for r in rows]
    warm = search._stack_params(items)
    torch.testing.assert_close(warm["alpha"]["r"], params["alpha"]["r"].float().double())
    torch.testing.assert_close(warm["beta"]["z"], params["beta"]["z"])
    # a row without multipliers on a node: zeros there; a row without any params: no warm start
    rows[0] = {"alpha": rows[0]["alpha"], "beta": {}}
    warm = search._stack_params([search.SubDomain({}, None, r) for r in rows])
    assert float(warm["beta"]["z"][:, :, 0].abs().sum()) == 0.0
    assert float(warm["beta"]["z"][0, 0, 1, 2]) == pytest.approx(0.7)
    assert search._stack_params([search.SubDomain({}, None), *items[1:]]) is None
    assert search._row_params({}, 0) is None
