"""The linear-relaxation domain (CROWN, alpha-CROWN): containment by sampling, corners and
attacks; never looser than IBP (and alpha-CROWN never looser than CROWN); zero-width
equivalence; exact optimum by grid search on tiny networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundflow as bf
from tests.support.sampled import assert_weight_samples_inside, linear_models, sampled_points

D = torch.float64


@pytest.mark.parametrize("name", sorted(linear_models()))
@pytest.mark.parametrize("eps", [0.02, 0.2])
def test_containment_and_ordering(name, eps):
    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(1))
    ibp = bf.compute_bounds(model, x - eps, x + eps, method="ibp")
    crown = bf.compute_bounds(model, x - eps, x + eps, method="crown")
    alpha = bf.compute_bounds(model, x - eps, x + eps, method="alpha-crown")
    tol = 1e-9
    assert (crown[0] >= ibp[0] - tol).all() and (crown[1] <= ibp[1] + tol).all(), "crown looser than ibp"
    assert (alpha[0] >= crown[0] - tol).all() and (alpha[1] <= crown[1] + tol).all(), "alpha looser than crown"
    pts = sampled_points(model, x, eps)
    with torch.no_grad():
        for pt in pts:
            y = model(pt)
            for lo, hi in (ibp, crown, alpha):
                assert (y >= lo - tol).all() and (y <= hi + tol).all()


@pytest.mark.parametrize("name", ["mlp-relu", "cnn-maxpool-bn", "mlp-sigmoid-tanh"])
def test_specification_matrix(name):
    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(2))
    eps = 0.05
    n_out = model(x).shape[1]
    C = torch.zeros(n_out - 1, n_out, dtype=D)
    C[:, 0] = 1
    C[torch.arange(n_out - 1), torch.arange(1, n_out)] = -1  # margins y_0 - y_j
    res = {m: bf.compute_bounds(model, x - eps, x + eps, method=m, C=C) for m in ("ibp", "crown", "alpha-crown")}
    for m, (lo, _hi) in res.items():
        assert lo.shape == (shape[0], n_out - 1), m
    # bounding C y directly is at least as tight as going through the output box
    box_lo, box_hi = bf.compute_bounds(model, x - eps, x + eps, method="crown")
    via_box = box_lo[:, :1] - box_hi[:, 1:]
    assert (res["crown"][0] >= via_box - 1e-9).all()
    assert (res["crown"][0] >= res["ibp"][0] - 1e-9).all() and (res["alpha-crown"][0] >= res["crown"][0] - 1e-9).all()
    pts = sampled_points(model, x, eps, n=100)
    with torch.no_grad():
        for pt in pts:
            m = model(pt) @ C.T
            for lo, hi in res.values():
                assert (m >= lo - 1e-9).all() and (m <= hi + 1e-9).all()


@pytest.mark.parametrize("name", sorted(linear_models()))
def test_zero_width_equals_forward(name):
    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(3))
    y = model(x)
    for m in ("crown", "alpha-crown"):
        lo, hi = bf.compute_bounds(model, x, x, method=m)
        torch.testing.assert_close(lo, y, atol=1e-6, rtol=0)
        torch.testing.assert_close(hi, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("act", ["relu", "sigmoid"])
def test_tiny_networks_against_grid_search_optimum(act):
    torch.manual_seed(4)
    a = nn.ReLU() if act == "relu" else nn.Sigmoid()
    model = nn.Sequential(nn.Linear(2, 10), a, nn.Linear(10, 10), a, nn.Linear(10, 1)).to(D)
    x = torch.tensor([[0.3, -0.2]], dtype=D)
    eps = 0.5
    g = torch.linspace(-eps, eps, 401, dtype=D)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + x
    with torch.no_grad():
        y = model(grid)
    true_lo, true_hi = y.min().item(), y.max().item()
    gaps = {}
    for m in ("ibp", "crown", "alpha-crown"):
        lo, hi = bf.compute_bounds(model, x - eps, x + eps, method=m)
        assert lo.item() <= true_lo + 1e-12 and hi.item() >= true_hi - 1e-12, m
        gaps[m] = (true_lo - lo.item()) + (hi.item() - true_hi)
    print(f"{act}: width gap to the grid optimum", gaps)
    assert gaps["alpha-crown"] <= gaps["crown"] + 1e-12 <= gaps["ibp"] + 2e-12


def test_ops_without_a_linear_rule_take_their_interval_bounds_and_unknown_ops_are_named():
    class Sq(nn.Module):
        def forward(self, x):
            return x * x

    class Div(nn.Module):
        def forward(self, x):
            return 1.0 / (x + 3.0)

    class Cumprod(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, 1)

    torch.manual_seed(0)
    for tail in (Sq(), Div()):  # a product of two variables, a varying divisor: bounded, soundly
        model = nn.Sequential(nn.Linear(2, 2), tail).double()
        lo, hi = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
        lb, ub = bf.compute_bounds(model, lo, hi, method="crown")
        x = lo + (hi - lo) * torch.rand(500, 2, dtype=torch.float64)
        with torch.no_grad():
            y = model(x)
        assert torch.isfinite(lb).all() and torch.isfinite(ub).all()
        assert (y >= lb - 1e-12).all() and (y <= ub + 1e-12).all()
    # an op with no rule in any domain: a one-line error naming it
    with pytest.raises(bf.UnsupportedOperation, match="cumprod"):
        bf.compute_bounds(Cumprod(), torch.zeros(1, 2), torch.ones(1, 2), method="crown")


@pytest.mark.parametrize("name", ["mlp-relu", "cnn-maxpool-bn", "mlp-sigmoid-tanh"])
def test_bounded_weights_containment(name):
    """Interval parameters: sampled and corner parameter vectors with sampled inputs stay inside;
    CROWN is never looser than IBP."""

    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(5))
    eps = 0.03
    params = bf.interval_parameters(model, 0.005, requires_grad=False)
    res = {
        m: bf.compute_bounds(model, x - eps, x + eps, method=m, params=params) for m in ("ibp", "crown", "alpha-crown")
    }
    assert (res["crown"][0] >= res["ibp"][0] - 1e-9).all() and (res["crown"][1] <= res["ibp"][1] + 1e-9).all()
    assert (res["alpha-crown"][0] >= res["crown"][0] - 1e-9).all()
    assert_weight_samples_inside(model, params, x, eps, res, 300, corners_every=3)


@pytest.mark.parametrize("maxpool", ["deeppoly", "tight"])
@pytest.mark.parametrize("name", sorted(linear_models()))
def test_forward_mode_containment(name, maxpool):
    from boundflow.domains.linear import ForwardDomain

    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(7))
    eps = 0.05
    ibp = bf.compute_bounds(model, x - eps, x + eps, method="ibp")
    fwd = bf.compute_bounds(model, x - eps, x + eps, method=ForwardDomain(maxpool))
    assert (fwd[0] >= ibp[0] - 1e-9).all() and (fwd[1] <= ibp[1] + 1e-9).all()
    pts = sampled_points(model, x, eps, n=100)
    with torch.no_grad():
        for pt in pts:
            y = model(pt)
            assert (y >= fwd[0] - 1e-9).all() and (y <= fwd[1] + 1e-9).all()
    lo, hi = bf.compute_bounds(model, x, x, method=ForwardDomain(maxpool))
    torch.testing.assert_close(lo, model(x).detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(hi, model(x).detach(), atol=1e-6, rtol=0)


class _SharedPool(nn.Module):
    """Many features, all functions of a 2-D input, max-pooled (global or in windows, with
    padding) and mixed by a head with both signs: a point cloud under one rotation angle."""

    def __init__(self, kernel, stride=None, padding=0):
        super().__init__()
        self.grid = (36, 1) if kernel == (36, 1) else (6, 6)
        self.lift = nn.Sequential(nn.Linear(2, 48), nn.Tanh(), nn.Linear(48, 4 * 36))
        self.pool = nn.MaxPool2d(kernel, stride, padding)
        n = self.pool(torch.zeros(1, 4, *self.grid)).numel()
        self.head = nn.Sequential(nn.Linear(n, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, z):
        return self.head(self.pool(self.lift(z).reshape(-1, 4, *self.grid)).flatten(1))


@pytest.mark.parametrize("kernel,stride,padding", [((36, 1), None, 0), (3, 2, 1), (2, 2, 0)])
def test_tight_maxpool_is_sound_and_tighter(kernel, stride, padding):
    """The pivot-difference max-pool bound contains sampled, corner and attacked outputs, and on
    shared low-dimensional inputs gives narrower outputs than DeepPoly's constant upper bound."""
    from boundflow.domains.linear import ForwardDomain

    torch.manual_seed(3)
    model = _SharedPool(kernel, stride, padding).to(D).eval()
    x = torch.randn(5, 2, dtype=D, generator=torch.Generator().manual_seed(4))
    eps = 0.05
    dp = bf.compute_bounds(model, x - eps, x + eps, method=ForwardDomain("deeppoly"))
    tight = bf.compute_bounds(model, x - eps, x + eps, method=ForwardDomain("tight"))
    pts = sampled_points(model, x, eps, n=300)
    with torch.no_grad():
        for pt in pts:
            y = model(pt)
            assert (y >= tight[0] - 1e-9).all() and (y <= tight[1] + 1e-9).all()
    assert (tight[0] >= dp[0] - 1e-12).all() and (tight[1] <= dp[1] + 1e-12).all()  # never looser
    w_dp, w_t = (dp[1] - dp[0]).mean(), (tight[1] - tight[0]).mean()
    assert w_t < 0.95 * w_dp, (float(w_t), float(w_dp))
    with pytest.raises(ValueError, match="maxpool must be one of"):
        ForwardDomain("hull")


@pytest.mark.parametrize("act", ["exp", "log", "softplus"])
def test_convex_concave_relaxations(act):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            if act == "exp":
                h = torch.exp(h)
            elif act == "log":
                h = torch.log(torch.sigmoid(h) + 0.5)
            else:
                h = nn.functional.softplus(h)
            return self.b(h)

    torch.manual_seed(8)
    model = Net().to(D)
    x = torch.randn(4, 3, dtype=D)
    eps = 0.2
    res = {m: bf.compute_bounds(model, x - eps, x + eps, method=m) for m in ("ibp", "crown", "forward")}
    for m in ("crown", "forward"):
        assert (res[m][0] >= res["ibp"][0] - 1e-9).all() and (res[m][1] <= res["ibp"][1] + 1e-9).all()
    pts = sampled_points(model, x, eps, n=150)
    with torch.no_grad():
        for pt in pts:
            y = model(pt)
            for lo, hi in res.values():
                assert (y >= lo - 1e-9).all() and (y <= hi + 1e-9).all()


@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid])
def test_alpha_crown_optimises_sigmoid_and_tanh_tangent_points(act):
    """alpha-CROWN moves the tangent points of S-shaped activations: strictly tighter than
    CROWN on average, never looser per output, and sound on sampled inputs."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(12, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 4)).double()
    _check_alpha_beats_crown(net, torch.rand(6, 12, dtype=torch.float64), 0.2)


def _check_alpha_beats_crown(net: nn.Module, x: torch.Tensor, eps: float) -> None:
    """alpha-CROWN never looser than CROWN per output, strictly tighter in sum (by 0.1 %), and
    containing the outputs at 2000 sampled inputs of the box."""
    c_lo, c_hi = bf.compute_bounds(net, x - eps, x + eps, method="crown")
    a_lo, a_hi = bf.compute_bounds(net, x - eps, x + eps, method="alpha-crown")
    assert bool((a_lo >= c_lo - 1e-12).all() and (a_hi <= c_hi + 1e-12).all())
    assert float((a_hi - a_lo).sum()) < float((c_hi - c_lo).sum()) * (1 - 1e-3)
    pts = x + eps * (2 * torch.rand(2000, *x.shape, dtype=x.dtype) - 1)
    with torch.no_grad():
        ys = net(pts.reshape(-1, x.shape[1])).reshape(2000, *a_lo.shape)
    assert bool((ys >= a_lo - 1e-9).all() and (ys <= a_hi + 1e-9).all())


@pytest.mark.parametrize("act", ["exp", "softplus"])
def test_alpha_crown_optimises_convex_tangent_points(act):
    """alpha-CROWN moves the tangent points of exp and softplus: never looser than CROWN per
    output, strictly tighter in sum, and sound on sampled inputs."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 3)

        def forward(self, x):
            h = self.a(x)
            h = torch.exp(h / 4) if act == "exp" else torch.nn.functional.softplus(h)
            return self.b(h)

    torch.manual_seed(2)
    _check_alpha_beats_crown(Net().double(), torch.rand(5, 6, dtype=torch.float64), 0.3)


@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_maxpool_lower_line_is_sound_for_every_weight_and_alpha_gains(pool):
    """alpha-CROWN's max-pool lower line ``y >= sum_j w_j x_j``: sound for random, negative,
    all-zero and one-hot weights (overlapping and padded windows); alpha-CROWN with it is never
    looser than CROWN and contains sampled outputs."""
    import importlib

    from boundflow.graph import capture

    crown_mod = importlib.import_module("boundflow.domains.linear.crown")
    alpha_mod = importlib.import_module("boundflow.domains.linear.alpha")
    k, s, p = pool
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(k, s, padding=p), nn.Flatten())
    x = torch.rand(3, 1, 8, 8)
    net.append(nn.Linear(net(x).shape[1], 4))
    net, x = net.double(), x.double()
    eps = 0.05
    lo, hi = x - eps, x + eps
    g = capture(net, x)
    _, _, state = crown_mod.crown(g, lo, hi)
    out_node = next(n for n in g.gm.graph.nodes if n.op == "output").args[0]
    pool_node = next(n for n in g.gm.graph.nodes if n.target is torch.ops.aten.max_pool2d_with_indices.default)
    init = alpha_mod.maxpool_alpha_init(state.lower[pool_node.args[0]], list(pool_node.args[1:]))
    pts = x + eps * (2 * torch.rand(1000, *x.shape, dtype=x.dtype) - 1)
    with torch.no_grad():
        ys = net(pts.reshape(-1, *x.shape[1:])).reshape(1000, 3, 4)
    gen = torch.Generator().manual_seed(0)
    for w in (init, torch.rand(init.shape, generator=gen, dtype=x.dtype), torch.randn(init.shape, generator=gen,
              dtype=x.dtype), torch.zeros_like(init)):  # fmt: skip
        state.alpha = {(pool_node, out_node): w}
        b_lo, b_hi = alpha_mod._final(state, g, out_node, lo, None)
        assert bool((ys >= b_lo - 1e-9).all() and (ys <= b_hi + 1e-9).all())
    state.alpha = {}
    c_lo, c_hi = bf.compute_bounds(net, lo, hi, method="crown")
    a_lo, a_hi = bf.compute_bounds(net, lo, hi, method="alpha-crown")
    assert bool((a_lo >= c_lo - 1e-12).all() and (a_hi <= c_hi + 1e-12).all())
    assert bool((ys >= a_lo - 1e-9).all() and (ys <= a_hi + 1e-9).all())


@pytest.mark.parametrize(
    "pool",
    [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=1, padding=1),
     dict(kernel_size=2, stride=1, dilation=2), dict(kernel_size=3, stride=2, ceil_mode=True)],
)  # fmt: skip
def test_crown_tight_maxpool_is_sound_and_never_looser_than_deeppoly(pool):
    """CROWN with the pivot-difference upper line for max pooling (``CrownDomain("tight")``):
    contains sampled and corner inputs' outputs on overlapping, padded, dilated and ceil-mode
    windows, is never looser than DeepPoly's rule per output, and tighter on average."""
    from boundflow.domains.linear import CrownDomain

    torch.manual_seed(4)
    body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(**pool), nn.Flatten())
    x = torch.rand(3, 1, 9, 9)
    net = nn.Sequential(*body, nn.Linear(body(x).shape[1], 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = x.double()
    eps = 0.05
    d_lo, d_hi = bf.compute_bounds(net, x - eps, x + eps, method="crown")
    t_lo, t_hi = bf.compute_bounds(net, x - eps, x + eps, method=CrownDomain("tight"))
    assert bool((t_lo >= d_lo - 1e-12).all() and (t_hi <= d_hi + 1e-12).all())
    assert float((t_hi - t_lo).sum()) < float((d_hi - d_lo).sum())
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (500, *x.shape), generator=g).to(x.dtype) * 2 - 1  # box corners
    pts = torch.cat([x + eps * signs, x + eps * (2 * torch.rand(1500, *x.shape, generator=g, dtype=x.dtype) - 1)])
    with torch.no_grad():
        ys = net(pts.reshape(-1, *x.shape[1:])).reshape(len(pts), *t_lo.shape)
    assert bool((ys >= t_lo - 1e-9).all() and (ys <= t_hi + 1e-9).all())
    with pytest.raises(ValueError, match="maxpool must be"):
        CrownDomain("magic")


class _Attention(nn.Module):
    """``softmax(Q K^T / sqrt(d)) V`` on ``n`` tokens of width ``d`` (products of two variables)."""

    def __init__(self, n: int, d: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n, self.d = n, d
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(d, d, generator=g, dtype=torch.float64)) for _ in "qkv")

    def forward(self, x):
        t = x.reshape(x.shape[0], self.n, self.d)
        q, k, v = (torch.bmm(t, w.expand(t.shape[0], -1, -1)) for w in (self.wq, self.wk, self.wv))
        s = torch.bmm(q, k.transpose(1, 2)) / self.d**0.5
        return torch.bmm(torch.softmax(s, -1), v).reshape(x.shape[0], -1)


@pytest.mark.parametrize("seed", range(4))
def test_attention_products_of_two_variables_are_bounded_soundly_and_tighter_than_intervals(seed):
    n, d = 2 + seed % 2, 2 + seed // 2
    model = _Attention(n, d, seed)
    g = torch.Generator().manual_seed(100 + seed)
    lo = torch.randn(2, n * d, generator=g, dtype=torch.float64)
    hi = lo + 0.3 * torch.rand(2, n * d, generator=g, dtype=torch.float64)
    lb, ub = bf.compute_bounds(model, lo, hi, method="crown")
    ilb, iub = bf.compute_bounds(model, lo, hi, method="ibp")
    for b in range(2):
        x = lo[b] + (hi[b] - lo[b]) * torch.rand(3000, n * d, generator=g, dtype=torch.float64)
        corners = torch.where(torch.rand(64, n * d, generator=g) < 0.5, lo[b], hi[b])
        with torch.no_grad():
            y = model(torch.cat([x, corners]))
        assert (y >= lb[b] - 1e-9).all() and (y <= ub[b] + 1e-9).all()
    assert float((ub - lb).sum()) <= float((iub - ilb).sum()) + 1e-9


@pytest.mark.parametrize("name", sorted(linear_models()))
def test_forward_intermediate_bounds_for_narrow_inputs_contain_samples(name, monkeypatch):
    """A narrow input into a wide network takes its intermediate bounds forward, then one
    backward pass (``crown.forward_pays``; forced here on small networks): contains sampled and
    attacked outputs, never looser than intervals, and the switch really happened."""
    import importlib

    crown_mod = importlib.import_module("boundflow.domains.linear.crown")
    forward_mod = importlib.import_module("boundflow.domains.linear.forward")

    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(1))
    eps = 0.2
    monkeypatch.setattr(crown_mod, "FORWARD_COST", 0)
    calls = []
    real = forward_mod.forward_bounds
    monkeypatch.setattr(forward_mod, "forward_bounds", lambda *a, **k: calls.append(1) or real(*a, **k))
    lb, ub = bf.compute_bounds(model, x - eps, x + eps, method="crown")
    assert calls, "the forward pass did not run"
    ilb, iub = bf.compute_bounds(model, x - eps, x + eps, method="ibp")
    assert (lb >= ilb - 1e-9).all() and (ub <= iub + 1e-9).all()
    pts = sampled_points(model, x, eps)
    with torch.no_grad():
        for p in pts:
            y = model(p)
            assert (y >= lb - 1e-9).all() and (y <= ub + 1e-9).all(), name


@pytest.mark.parametrize("name", ["cnn-maxpool-bn", "cnn-avgpool"])
def test_forward_mode_without_room_for_a_dense_jacobian_keeps_interval_bounds(name, monkeypatch):
    """A signed linear map whose dense Jacobian would not fit (forced here: no room at all) keeps
    the node's interval bounds as constant forms: still contains sampled and attacked outputs."""
    import importlib

    forward_mod = importlib.import_module("boundflow.domains.linear.forward")
    model, shape = linear_models()[name]
    model = model.to(D).eval()
    x = torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(2))
    eps = 0.1
    full = bf.compute_bounds(model, x - eps, x + eps, method="forward")
    monkeypatch.setattr(forward_mod, "DENSE_JACOBIAN_MAX", 0)
    lb, ub = bf.compute_bounds(model, x - eps, x + eps, method="forward")
    assert (ub - lb >= full[1] - full[0] - 1e-9).all()  # never tighter than with the Jacobian
    assert float((ub - lb).sum()) > float((full[1] - full[0]).sum()) * 1.1  # the fallback was taken
    pts = sampled_points(model, x, eps)
    with torch.no_grad():
        for p in pts:
            y = model(p)
            assert (y >= lb - 1e-9).all() and (y <= ub + 1e-9).all(), name
