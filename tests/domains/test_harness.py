"""The containment check must be able to fail: deliberately unsound rules are caught."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from boundflow.domains.interval import RULES, lohi, make
from boundflow.domains.interval.table import Rule
from tests.support.containment import Iv, check_containment

aten = torch.ops.aten


def _swap(monkeypatch, op, fn):
    monkeypatch.setitem(RULES, op, Rule(op, fn))


def test_catches_a_forward_rule_that_drops_the_radius(monkeypatch):
    def bad_mm(a, b):
        a_lo, a_hi = lohi(a)
        b_lo, _ = lohi(b)
        c = torch.mm((a_lo + a_hi) / 2, b_lo)
        return make(c, c.clone())

    _swap(monkeypatch, aten.mm.default, bad_mm)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    with pytest.raises(AssertionError, match="outside bounds"):
        check_containment(torch.mm, [Iv(x - 0.1, x + 0.1), torch.randn(4, 2, generator=g, dtype=torch.float64)])


def test_catches_a_backward_rule_that_misses_the_sigmoid_peak(monkeypatch):
    def bad_sigmoid_backward(grad_output, output):
        lo, hi = lohi(output)
        g_lo, _ = lohi(grad_output)
        d_lo = torch.minimum(lo * (1 - lo), hi * (1 - hi))
        d_hi = torch.maximum(lo * (1 - lo), hi * (1 - hi))  # misses the maximum 1/4 at s = 1/2
        return make(g_lo * d_lo, g_lo * d_hi)

    _swap(monkeypatch, aten.sigmoid_backward.default, bad_sigmoid_backward)
    x = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    with pytest.raises(AssertionError, match="gradient of argument 0 outside bounds"):
        check_containment(lambda z: torch.sigmoid(z) * 1.0, [Iv(x, -x)], seed=1)


def test_catches_a_loss_rule_that_is_too_tight(monkeypatch):
    def bad_mse(self, target, reduction=1):
        lo, hi = lohi(self)
        d = (lo + hi) / 2 - lohi(target)[0]
        v = (d * d).mean()
        return make(v, v.clone())

    _swap(monkeypatch, aten.mse_loss.default, bad_mse)
    x = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(AssertionError, match="outside bounds"):
        check_containment(lambda z: F.mse_loss(z, torch.ones(4, dtype=torch.float64)), [Iv(x - 1, x + 1)], grad=False)
