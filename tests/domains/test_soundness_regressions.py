"""Regression tests for the bound violations of the adversarial audit (issue 13): one test (or
more) per witness, each checking the bound against the concrete value that missed it."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.func import functional_call

import boundflow as bf
import boundflow.train as T
from boundflow import IntervalTensor as IT
from boundflow.domains.linear.domain import AlphaCrownDomain, ForwardDomain
from boundflow.encode.network import network_bounds
from boundflow.errors import DomainError, UnsupportedOperation
from boundflow.models import hidden_mlp as mlp
from boundflow.train.losses import plain_loss
from tests.support.containment import Iv, check_containment
from tests.support.fuzz import Case, check_case

D = torch.float64
LINEAR_METHODS = {
    "crown": "crown",
    "alpha-crown": AlphaCrownDomain(iterations=5),
    "forward": ForwardDomain("deeppoly"),
    "forward-tight": ForwardDomain("tight"),
}


def _all_bounds(model, lo, hi, methods=("ibp", "crown", "alpha-crown", "forward", "forward-tight", "lp", "milp")):
    out = {}
    for m in methods:
        if m in ("lp", "milp"):
            out[m] = network_bounds(model, lo, hi, m)
        else:
            out[m] = bf.compute_bounds(model, lo, hi, LINEAR_METHODS.get(m, m))
    return out


# 1 -- max pooling with overlapping windows ----------------------------------------------------


def test_overlapping_max_pool_witness_every_method():
    model = nn.Sequential(nn.MaxPool2d((1, 2), stride=1), nn.Flatten()).double()
    lo = torch.tensor([[[[0.0, 1, 2]]]], dtype=D)
    hi = torch.tensor([[[[0.5, 5, 2.5]]]], dtype=D)
    witness = model(torch.tensor([[[[0.0, 5, 2]]]], dtype=D))  # second output is 5
    for m, (l, u) in _all_bounds(model, lo, hi).items():
        assert (l.reshape(-1) <= witness.reshape(-1)).all() and (witness.reshape(-1) <= u.reshape(-1)).all(), m


@pytest.mark.parametrize("seed", range(16))
def test_resnet_stem_blocks_contain_sampled_points(seed):
    """Conv-ReLU-MaxPool(3, stride 2, padding 1) blocks: 6 of 16 missed before the fix."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(), nn.Linear(8, 2)
    ).double()
    c = torch.randn(1, 1, 4, 4, dtype=D)
    case = Case(seed, model.eval(), c - 0.3, c + 0.3, None, ["stem"])
    tally = check_case(case, ("ibp", "crown", "alpha-crown", "forward", "forward-tight", "lp", "milp"))
    assert not tally.failures, tally.failures
    assert tally.checked["crown"] == 1 and tally.checked["milp"] == 1


@pytest.mark.parametrize("ceil", [False, True])
def test_pool_geometries_dilated_padded_and_ceil_mode(ceil):
    for k, s, p, d in [(3, 1, 1, 1), (2, 1, 0, 2), (3, 2, 1, 1), (2, 3, 1, 1), ((1, 3), (1, 1), (0, 1), (1, 1))]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.MaxPool2d(k, s, p, d, ceil_mode=ceil), nn.Flatten()).double()
        c = torch.randn(1, 1, 5, 5, dtype=D)
        case = Case(0, model, c - 0.5, c + 0.5, None, [f"pool {k} {s} {p} {d} {ceil}"])
        methods = ("crown", "forward", "forward-tight") + (() if ceil else ("milp",))
        tally = check_case(case, methods)
        assert not tally.failures, tally.failures
        assert sum(tally.checked.values()) == len(methods)


# 2 -- LeakyReLU with slope > 1 (concave) ------------------------------------------------------


@pytest.mark.parametrize("slope", [2.0, 3.0, -0.5, -2.0])
def test_leaky_relu_any_slope(slope):
    lin = nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(0.0)
    model = nn.Sequential(lin, nn.LeakyReLU(slope))
    lo, hi = torch.tensor([[-1.0]], dtype=D), torch.tensor([[1.0]], dtype=D)
    values = model(torch.linspace(-1, 1, 201, dtype=D).reshape(-1, 1))
    for m, (l, u) in _all_bounds(model, lo, hi).items():
        assert l.item() <= values.min().item() + 1e-9 and u.item() >= values.max().item() - 1e-9, (m, l, u)


# 3, 4 -- forward mode: alpha of add/sub, negative slopes composed ------------------------------


class _SubAlpha(nn.Module):
    def forward(self, x):
        return torch.sub(x, torch.relu(x), alpha=3.0)


class _NegSlopes(nn.Module):
    def forward(self, x):
        return nn.functional.leaky_relu(-torch.relu(x), -0.5) - 0.5 * x


@pytest.mark.parametrize("model,true_range", [(_SubAlpha(), (-2.0, 0.0)), (_NegSlopes(), (0.0, 0.5))])
def test_forward_mode_alpha_and_negative_slopes(model, true_range):
    lo, hi = torch.tensor([[-1.0]], dtype=D), torch.tensor([[1.0]], dtype=D)
    for m in ("ibp", "crown", "forward", "forward-tight"):
        l, u = bf.compute_bounds(model, lo, hi, LINEAR_METHODS.get(m, m))
        assert l.item() <= true_range[0] + 1e-12 and u.item() >= true_range[1] - 1e-12, (m, l, u)


# 5 -- CROWN with a bounded divisor ------------------------------------------------------------


class _DivParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(1, dtype=D))

    def forward(self, x):
        return x / self.s


def test_crown_bounded_divisor_witness():
    params = {"s": IT(torch.tensor([0.1], dtype=D), torch.tensor([1.9], dtype=D))}
    x = torch.tensor([[1.0]], dtype=D)
    for m in ("ibp", "crown", "alpha-crown"):
        l, u = bf.compute_bounds(_DivParam(), x, x, LINEAR_METHODS.get(m, m), params=params)
        assert u.item() >= 10.0 and l.item() <= 1 / 1.9, (m, l, u)


def test_crown_divisor_containing_zero_is_refused():
    params = {"s": IT(torch.tensor([-0.5], dtype=D), torch.tensor([1.0], dtype=D))}
    x = torch.tensor([[1.0]], dtype=D)
    with pytest.raises(UnsupportedOperation, match="contains 0"):
        bf.compute_bounds(_DivParam(), x, x, "crown", params=params)


def test_crown_bounded_weights_with_negative_scalings():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 2, dtype=D))
            self.b = nn.Parameter(torch.randn(2, dtype=D))

        def forward(self, x):
            y = torch.addmm(self.b, x, self.w, beta=-1.5, alpha=-2.0)
            return torch.sub(y, self.b, alpha=3.0)

    torch.manual_seed(0)
    m = M()
    params = {n: IT.from_center_radius(p.detach(), 0.2) for n, p in m.named_parameters()}
    c = torch.randn(1, 3, dtype=D)
    case = Case(0, m, c - 0.2, c + 0.2, params, ["addmm alpha/beta < 0, sub alpha"])
    tally = check_case(case, ("ibp", "crown", "alpha-crown", "mibp"))
    assert not tally.failures, tally.failures
    assert tally.checked["crown"] == 1


# 6 -- stale midpoint-radius cache after in-place writes ----------------------------------------


def _fresh(t: IT) -> IT:
    return IT(t.lower.clone(), t.upper.clone())


def test_matmul_cache_sees_in_place_write_through_a_view():
    x = IT(torch.ones(1, 2, dtype=D), 2 * torch.ones(1, 2, dtype=D))
    w = IT(torch.ones(2, 2, dtype=D), 2 * torch.ones(2, 2, dtype=D))
    _ = x @ w
    w[0].mul_(-3.0)
    got = x @ w
    ref = _fresh(x) @ _fresh(w)
    assert torch.equal(got.lower, ref.lower) and torch.equal(got.upper, ref.upper)


@pytest.mark.parametrize(
    "op",
    [
        lambda x, w, b: x @ w,
        lambda x, w, b: torch.mm(x, w),
        lambda x, w, b: torch.addmm(b, x, w),
        lambda x, w, b: torch.bmm(x.unsqueeze(0), w.unsqueeze(0)),
        lambda x, w, b: torch.baddbmm(b.unsqueeze(0).unsqueeze(0), x.unsqueeze(0), w.unsqueeze(0)),
        lambda x, w, b: torch.mv(w.t(), x[0]),
        lambda x, w, b: torch.addmv(b, w.t(), x[0]),
        lambda x, w, b: x @ w.t().t(),
    ],
)
def test_every_cached_product_after_in_place_writes(op):
    torch.manual_seed(0)
    x = IT.from_center_radius(torch.randn(1, 3, dtype=D), 0.1)
    w = IT.from_center_radius(torch.randn(3, 3, dtype=D), 0.1)
    b = IT.from_center_radius(torch.randn(3, dtype=D), 0.1)
    wt = w.t()  # a view that carries the cache
    _ = op(x, w, b), op(x, wt.t(), b)
    for write in (
        lambda: w[0].mul_(-3.0),
        lambda: w.add_(1.0),
        lambda: wt[1].copy_(torch.zeros(3, dtype=D)),
        lambda: x.mul_(-2.0),
        lambda: w.lower.sub_(0.5),
    ):
        write()
        for a, m in ((op(x, w, b), op(_fresh(x), _fresh(w), _fresh(b))),):
            assert torch.allclose(a.lower, m.lower) and torch.allclose(a.upper, m.upper)


def test_sgd_steps_on_interval_parameter_used_as_matmul():
    torch.manual_seed(0)
    w = IT.from_center_radius(torch.randn(3, 2, dtype=D), 0.01, requires_grad=True)
    x = torch.randn(4, 3, dtype=D)
    opt = torch.optim.SGD([w], lr=0.5, foreach=False)
    for _ in range(3):
        opt.zero_grad()
        (x @ w).sum().backward()
        opt.step()
        got, ref = x @ w, x @ _fresh(w)
        assert torch.allclose(got.lower, ref.lower) and torch.allclose(got.upper, ref.upper)


# 7 -- booleans from non-boolean intervals --------------------------------------------------------


def test_truth_values_of_intervals():
    iv = IT(torch.tensor([-1.0, 0.0, 0.5, 0.0]), torch.tensor([1.0, 0.0, 2.0, 3.0]))
    b = iv.bool()
    assert b.lower.tolist() == [False, False, True, False] and b.upper.tolist() == [True, False, True, True]
    for f in (torch.any, torch.all):
        r = f(IT(torch.tensor([-1.0]), torch.tensor([1.0])))
        assert r.lower.item() is False and r.upper.item() is True
    n = torch.logical_not(IT(torch.tensor([-1.0]), torch.tensor([1.0])))
    assert n.lower.item() is False and n.upper.item() is True
    a = IT(torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 3.0]))
    c = torch.tensor([1.0, 0.0])
    for op in (torch.logical_and, torch.logical_or, torch.logical_xor):
        r = op(a, c)
        for xv in (-1.0, 0.0, 1.0):
            v = op(torch.tensor([xv, 2.5]), c)
            assert ((r.lower <= v) & (v <= r.upper)).all(), op
    assert torch.logical_xor(IT(torch.tensor([2.0]), torch.tensor([2.0])), torch.tensor([1.0])).upper.item() is False


def test_integer_casts_in_range_and_refused_out_of_range():
    r = IT(torch.tensor([0.2, 3.7]), torch.tensor([1.5, 9.9])).to(torch.uint8)
    assert r.lower.tolist() == [0, 3] and r.upper.tolist() == [1, 9]
    with pytest.raises(DomainError, match="uint8"):
        IT(torch.tensor([-1.0]), torch.tensor([1.0])).to(torch.uint8)
    with pytest.raises(DomainError, match="int8"):
        IT(torch.tensor([0], dtype=torch.int64), torch.tensor([300], dtype=torch.int64)).to(torch.int8)
    target = IT(torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool))
    target.copy_(IT(torch.tensor([-1.0]), torch.tensor([1.0])))
    assert target.lower.item() is False and target.upper.item() is True


# 8, 9, 10 -- index_add and elu with negative alpha, division by zero --------------------------------


@pytest.mark.parametrize("alpha", [-1.5, -1.0, 0.5, 2.0])
def test_index_add_any_alpha_values_and_gradients(alpha):
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 2, 0])
    s = Iv(torch.randn(4, 2, generator=g, dtype=D), None)
    s.hi = s.lo + torch.rand(4, 2, generator=g, dtype=D)
    src = Iv(torch.randn(3, 2, generator=g, dtype=D), None)
    src.hi = src.lo + torch.rand(3, 2, generator=g, dtype=D)
    check_containment(lambda a, b: a.index_add(0, idx, b, alpha=alpha), [s, src])


@pytest.mark.parametrize(
    "alpha,scale,input_scale", [(-1.0, 1.0, 1.0), (-2.5, 1.0, 1.0), (1.0, -1.0, 1.0), (0.5, 1.0, -2.0), (2.0, 1.0, 1.0)]
)
def test_elu_any_arguments(alpha, scale, input_scale):
    g = torch.Generator().manual_seed(1)
    lo = torch.randn(64, generator=g, dtype=D) * 2
    x = Iv(lo, lo + torch.rand(64, generator=g, dtype=D) * 2)
    check_containment(lambda t: torch.ops.aten.elu(t, alpha, scale, input_scale), [x], grad=False)
    if scale > 0 and input_scale > 0:
        check_containment(lambda t: nn.functional.elu(t, alpha), [x])


def test_division_by_exact_zero():
    r = IT(torch.tensor([-1.0, 0.5]), torch.tensor([1.0, 2.0])) / 0.0
    assert r.lower.tolist() == [-float("inf")] * 2 and r.upper.tolist() == [float("inf")] * 2
    r = IT(torch.tensor([-1.0]), torch.tensor([1.0])) / torch.tensor([0.0])
    assert r.lower.item() == -float("inf") and r.upper.item() == float("inf")


# 11 -- sound_rounding: exact rational values inside the bounds --------------------------------------


def _q(t) -> list[Fraction]:
    return [Fraction(v) for v in t.reshape(-1).tolist()]


def _inside(value: list[Fraction], out: IT) -> bool:
    return all(lo <= v <= hi for v, lo, hi in zip(value, _q(out.lower), _q(out.upper)))


def _rational_cases():
    """(name, interval function, exact rational formula on Fractions, number of interval args)."""
    q = Fraction
    return [
        ("add-alpha", lambda a, b: torch.add(a, b, alpha=0.3), lambda a, b: a + q(0.3) * b, 2),
        ("sub-alpha", lambda a, b: torch.sub(a, b, alpha=-1.7), lambda a, b: a - q(-1.7) * b, 2),
        ("addcmul", lambda a, b, c: torch.addcmul(a, b, c, value=0.7), lambda a, b, c: a + q(0.7) * b * c, 3),
        (
            "addcdiv",
            lambda a, b, c: torch.addcdiv(a, b, c + 3.0, value=-0.3),
            lambda a, b, c: a + q(-0.3) * b / (c + 3),
            3,
        ),
        ("lerp", lambda a, b: torch.lerp(a, b, 0.3), lambda a, b: a + q(0.3) * (b - a), 2),
        ("div", lambda a, b: a / (b + 3.0), lambda a, b: a / (b + 3), 2),
        ("mul", lambda a, b: a * b, lambda a, b: a * b, 2),
    ]


@pytest.mark.parametrize("name,f,exact,n_args", _rational_cases(), ids=[c[0] for c in _rational_cases()])
def test_sound_rounding_rational_containment(name, f, exact, n_args):
    """200 random float32 cases: the exact rational value at the end points and at random floats
    inside lies in the bounds computed under ``sound_rounding``."""
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    for case in range(200):
        lows = [torch.randn(8, generator=g) for _ in range(n_args)]
        widths = [torch.rand(8, generator=g) * (0 if case % 4 == 0 else 1e-3) for _ in range(n_args)]
        ivs = [IT(lo, lo + w) for lo, w in zip(lows, widths)]
        with bf.sound_rounding():
            out = f(*ivs)
        pick = rng.choice(["lo", "hi", "mid"])
        pts = [
            iv.lower if pick == "lo" else iv.upper if pick == "hi" else iv.lower + (iv.upper - iv.lower) / 3
            for iv in ivs
        ]
        pts = [torch.minimum(torch.maximum(p, iv.lower), iv.upper) for p, iv in zip(pts, ivs)]
        cols = [_q(p) for p in pts]
        value = [exact(*vals) for vals in zip(*cols)]
        assert _inside(value, out), (name, case)


def test_sound_rounding_rational_batch_norm_eval():
    """Eval batch norm ``(x - mean) / sqrt(var + eps) * w + b``: the square root is bracketed by
    rationals (``r_lo^2 <= var + eps <= r_hi^2``) and both extremes must lie in the bounds."""
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm1d(6).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(6, generator=g))
        bn.running_var.copy_(torch.rand(6, generator=g) * 3 + 0.01)
        bn.weight.copy_(torch.randn(6, generator=g))
        bn.bias.copy_(torch.randn(6, generator=g))
    for _ in range(200):
        x = torch.randn(1, 6, generator=g) * 3
        with bf.sound_rounding():
            out = bn(IT(x, x.clone()))
        for j in range(6):
            s = Fraction(bn.running_var[j].item()) + Fraction(bn.eps)
            r = Fraction(float(s) ** 0.5)
            r_lo, r_hi = r * (1 - Fraction(1, 10**12)), r * (1 + Fraction(1, 10**12))
            assert r_lo * r_lo <= s <= r_hi * r_hi
            num = (Fraction(x[0, j].item()) - Fraction(bn.running_mean[j].item())) * Fraction(bn.weight[j].item())
            b = Fraction(bn.bias[j].item())
            vals = [num / r_lo + b, num / r_hi + b]  # the true value lies between these two
            lo, hi = Fraction(out.lower[0, j].item()), Fraction(out.upper[0, j].item())
            assert lo <= min(vals) and max(vals) <= hi


# 12 -- pretraining with momentum: one SGD run keeps its optimiser ------------------------------------


def test_pretraining_momentum_state_carries_over():
    d = T.load_dataset("moons", n_samples=120)
    model = mlp(2, 1, 8, 2, 0)
    cfg = T.TrainConfig(epochs=2, lr=0.2, batch_size=20, loss="bce", momentum=0.9, pretrain_epochs=2)
    bounds = T.certified_training(model, T.linf(d.x_train, d.y_train, 0.0), cfg)
    # ordinary SGD that keeps one optimiser through pretraining and the certified epochs
    params = {n: p.detach().clone().to(D).requires_grad_(True) for n, p in model.named_parameters()}
    opt = torch.optim.SGD(list(params.values()), lr=cfg.lr, momentum=cfg.momentum)
    for epoch in range(cfg.pretrain_epochs + cfg.epochs):
        for idx in T.batch_indices(len(d.x_train), cfg, epoch):
            opt.zero_grad()
            plain_loss(functional_call(model.to(D), params, (d.x_train[idx],)), d.y_train[idx], cfg.loss).backward()
            opt.step()
    for n, p in params.items():
        assert (bounds.lower[n] - 1e-9 <= p).all() and (p <= bounds.upper[n] + 1e-9).all(), n
        torch.testing.assert_close(bounds.nominal[n], p.detach(), atol=1e-9, rtol=0)
