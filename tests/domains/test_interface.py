"""The domain interface: specs and their concretisation, bind-once prepared models, forward
mode's output spec, golden bounds that catch a looser result (not only an unsound one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundflow as bf
from boundflow.domains.linear import ForwardDomain

D = torch.float64


class Toy(nn.Module):
    """The two-neuron network of auto_LiRPA's ``examples/simple/toy.py`` (weights and box are
    facts from there): on ``[-1, 2] x [-2, 1]`` the exact range is ``[-2, 1]``."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(2, 2, bias=False)
        self.l2 = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, -1.0]]))
            self.l2.weight.copy_(torch.tensor([[1.0, -1.0]]))

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


TOY_BOX = (torch.tensor([[-1.0, -2.0]], dtype=D), torch.tensor([[2.0, 1.0]], dtype=D))


@pytest.mark.parametrize(
    "method, want_lo, want_hi",
    [("ibp", -6.0, 4.0), ("crown", -3.0, 3.0), ("lp", -3.0, 2.0), ("milp", -2.0, 1.0)],
)
def test_golden_toy_bounds(method, want_lo, want_hi):
    lo, hi = bf.compute_bounds(Toy().double(), *TOY_BOX, method=method)
    assert float(lo) == pytest.approx(want_lo, abs=1e-6) and float(hi) == pytest.approx(want_hi, abs=1e-6)


def test_golden_toy_alpha_crown_is_no_looser_than_its_reference():
    lo, hi = bf.compute_bounds(Toy().double(), *TOY_BOX, method="alpha-crown")
    assert float(lo) >= -3.0 - 1e-9 and float(hi) <= 2.0 + 1e-6
    assert float(lo) <= -2.0 + 1e-9 and float(hi) >= 1.0 - 1e-9  # and never past the exact range


def _mlp(seed, widths, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).double()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("maxpool", ["deeppoly", "tight"])
def test_forward_margins_with_C_equal_C_as_a_last_layer(seed, maxpool):
    torch.manual_seed(100 + seed)
    net = _mlp(seed, [3, 20, 20, 4], nn.ReLU if seed % 2 == 0 else nn.Tanh)
    C = torch.randn(3, 4, dtype=D)
    with_c = nn.Sequential(*net, nn.Linear(4, 3, bias=False)).double()
    with torch.no_grad():
        with_c[-1].weight.copy_(C)
    x = torch.rand(6, 3, dtype=D)
    dom = ForwardDomain(maxpool)
    lo, hi = bf.compute_bounds(net, x - 0.05, x + 0.05, method=dom, C=C)
    lo_g, hi_g = bf.compute_bounds(with_c, x - 0.05, x + 0.05, method=dom)
    torch.testing.assert_close(lo, lo_g, rtol=0, atol=1e-12)
    torch.testing.assert_close(hi, hi_g, rtol=0, atol=1e-12)
    # and never looser than the output box followed by C (what forward mode used to return)
    o_lo, o_hi = bf.compute_bounds(net, x - 0.05, x + 0.05, method=dom)
    cp, cn = C.clamp(min=0), C.clamp(max=0)
    assert (lo >= o_lo @ cp.T + o_hi @ cn.T - 1e-12).all()


def test_a_prepared_model_captures_once_and_matches_compute_bounds():
    net = _mlp(0, [4, 16, 16, 3])
    prepared = bf.prepare(net, "crown")
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=D)
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.rand(5, 4, dtype=D)
        res = prepared.bounds(bf.LinfBall(x, 0.1), bf.OutputSpec(C, torch.tensor([0.5], dtype=D)))
        lo, hi = bf.compute_bounds(net, x - 0.1, x + 0.1, method="crown", C=C)
        torch.testing.assert_close(res.lower, lo - 0.5)
        torch.testing.assert_close(res.upper, hi - 0.5)
    assert len(prepared._graphs) == 1  # 5 inputs padded to 8: one graph served all three queries


def _linear_spec(seed, b=3, n=8, k=2):
    g = torch.Generator().manual_seed(seed)
    slope = torch.randn(b, n, k, generator=g, dtype=D)
    t_lo = -torch.rand(b, k, generator=g, dtype=D)
    r_lo = torch.randn(b, n, generator=g, dtype=D)
    return bf.LinearSpec(slope, t_lo, t_lo + 0.3, r_lo, r_lo + 0.01, (n,))


def _sample(spec, m, seed):
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(m, *spec.theta_lower.shape, generator=g, dtype=D).round()  # vertices too
    th = spec.theta_lower + torch.where(
        torch.arange(m)[:, None, None] < m // 2, corners, torch.rand(corners.shape, generator=g, dtype=D)
    ) * (spec.theta_upper - spec.theta_lower)
    nu = spec.rem_lower + torch.rand(m, *spec.rem_lower.shape, generator=g, dtype=D) * (spec.rem_upper - spec.rem_lower)
    return torch.einsum("bnk,mbk->mbn", spec.slope, th) + nu


@pytest.mark.parametrize("seed", range(3))
def test_linear_spec_concretize_is_sound_and_attained(seed):
    spec = _linear_spec(seed)
    A = torch.randn(3, 4, 8, dtype=D, generator=torch.Generator().manual_seed(seed))
    lo, hi = spec.concretize(A, 1.5)
    xs = _sample(spec, 400, seed)
    vals = torch.einsum("bsn,mbn->mbs", A, xs) + 1.5
    assert (vals >= lo - 1e-12).all() and (vals <= hi + 1e-12).all()
    box_lo, _ = spec.box().concretize(A, 1.5)
    assert (lo >= box_lo - 1e-12).all()  # never looser than the bounding box


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown", "forward"])
@pytest.mark.parametrize("seed", range(3))
def test_linear_spec_bounds_contain_sampled_outputs(method, seed):
    spec = _linear_spec(seed)
    net = _mlp(seed, [8, 12, 12, 3])
    res = bf.prepare(net, method).bounds(spec, bf.OutputSpec.margins(0, 3))
    xs = _sample(spec, 300, seed)
    with torch.no_grad():
        y = net(xs.reshape(-1, 8)).reshape(300, 3, 3)
    m = y[..., :1] - y[..., 1:]
    assert (m >= res.lower - 1e-9).all() and (m <= res.upper + 1e-9).all()
    if method in ("crown", "forward"):
        box = bf.prepare(net, method).bounds(spec.box(), bf.OutputSpec.margins(0, 3))
        assert (res.lower >= box.lower - 1e-9).all()  # the shared theta only helps


def test_specs_reject_bad_arguments_by_name():
    with pytest.raises(ValueError, match="LinfBall: eps must be >= 0"):
        bf.LinfBall(torch.zeros(2), -0.1)
    spec = _linear_spec(0)
    with pytest.raises(ValueError, match="LinearSpec: rem_lower has shape"):
        bf.LinearSpec(spec.slope, spec.theta_lower, spec.theta_upper, spec.rem_lower[:, :3], spec.rem_upper, (8,))
    with pytest.raises(ValueError, match="lower > upper"):
        bf.LinearSpec(spec.slope, spec.theta_upper, spec.theta_lower, spec.rem_lower, spec.rem_upper, (8,))
    with pytest.raises(ValueError, match="label 3 is not one of 3 classes"):
        bf.OutputSpec.margins(3, 3)
    with pytest.raises(ValueError, match="unknown method 'deeppoly'"):
        bf.prepare(_mlp(0, [2, 2]), "deeppoly")


def test_relu_splits_report_intermediate_bounds_and_empty_sub_domains():
    net = _mlp(1, [2, 8, 2])
    prepared = bf.prepare(net, "crown")
    like = torch.zeros(2, dtype=D)
    names = prepared.split_nodes(2, like)
    shapes = prepared.node_shapes(2, like)
    assert len(names) == 1 and shapes[names[0]] == (2, 8)
    lo, hi = -torch.ones(2, 2, dtype=D), torch.ones(2, 2, dtype=D)
    free = torch.full((2, 8), float("inf"), dtype=D)
    base = prepared.bounds(bf.Box(lo, hi), splits={names[0]: (-free, free)})
    assert not base.empty.any()
    pre_lo, pre_hi = base.intermediate[names[0]]
    # sample 0: neuron 0 forced above its upper bound + 1 (contradiction); sample 1: untouched
    o_lo = -free.clone()
    o_lo[0, 0] = pre_hi[0, 0] + 1.0
    res = prepared.bounds(bf.Box(lo, hi), splits={names[0]: (o_lo, free)})
    assert res.empty.tolist() == [True, False]
    torch.testing.assert_close(res.lower[1], base.lower[1])


def test_solver_domain_reports_exact_entries_and_bounds_unpack():
    res = bf.prepare(Toy(), "milp").bounds(bf.Box(*TOY_BOX))
    lower, upper = res
    assert res.exact is not None and bool(res.exact.all())
    assert float(lower) == pytest.approx(-2.0, abs=1e-6) and float(upper) == pytest.approx(1.0, abs=1e-6)
