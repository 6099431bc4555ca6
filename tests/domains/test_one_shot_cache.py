"""One-shot ``compute_bounds`` reuses the model it prepared while nothing changed, and never
serves a stale graph: every way of changing a model invalidates the reuse, and the bounds always
equal those of a fresh preparation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import boundflow as bf
import boundflow.api as api
from boundflow.domains.registry import get_domain


class _Scaled(nn.Module):
    """A forward that reads a Python attribute and the training flag."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.scale = 1.0

    def forward(self, x):
        y = self.lin(x) * self.scale
        return y * 2 if self.training else y


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))


@pytest.fixture
def counted(monkeypatch):
    """Counts fresh preparations made by one-shot calls."""
    api.clear_cache()
    calls = []
    real = api.get_domain

    def counting(method):
        d = real(method)
        prep = d.prepare

        class Wrapped:
            def __getattr__(self, name):
                return getattr(d, name)

            def prepare(self, *a, **k):
                calls.append(method)
                return prep(*a, **k)

        return Wrapped()

    monkeypatch.setattr(api, "get_domain", counting)
    yield calls
    api.clear_cache()


def _fresh(model, lo, hi, method):
    return get_domain(method).prepare(model, api._params_in(model, None, torch.float64)).bounds(bf.Box(lo, hi))


def _same(model, lo, hi, method="crown"):
    a = bf.compute_bounds(model, lo, hi, method=method)
    b = _fresh(model, lo.double(), hi.double(), method)
    torch.testing.assert_close(a[0], b.lower, rtol=0, atol=0)
    torch.testing.assert_close(a[1], b.upper, rtol=0, atol=0)
    return a


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: the prepared copy is no cast
def test_repeated_calls_prepare_once_and_change_invalidates(counted, dtype):
    model = _mlp().to(dtype)
    x = torch.randn(4, 3, dtype=dtype)
    for method in ("crown", "ibp"):
        for _ in range(3):
            _same(model, x - 0.1, x + 0.1, method)
    z = torch.randn(7, 3)
    _same(model, z - 0.1, z + 0.2)  # another batch shape: the same preparation
    assert counted == ["crown", "ibp"]

    changes = {
        "a .data write": lambda m: m[0].weight.data.mul_(2),
        "an optimiser step": lambda m: _sgd_step(m),
        "load_state_dict": lambda m: m.load_state_dict(_mlp_state(seed=3)),  # copied into the parameters
        "a swapped submodule": lambda m: m.__setitem__(2, nn.Linear(5, 2).to(dtype)),
        "an in-place copy into a detached view": lambda m: m[2].bias.detach().copy_(torch.tensor([5.0, -5.0])),
    }
    if dtype == torch.float32:
        changes["a double() conversion"] = lambda m: m.double()
    for what, change in changes.items():
        before = len(counted)
        old = bf.compute_bounds(model, x - 0.1, x + 0.1, method="crown")
        change(model)
        new = _same(model, x - 0.1, x + 0.1)
        assert len(counted) == before + 1, what
        if what != "a double() conversion":  # (float32 values are exact in float64: same bounds)
            assert not torch.equal(old[0], new[0]), what  # the change mattered


def _sgd_step(m):
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(torch.randn(2, 3, dtype=next(m.parameters()).dtype)).sum().backward()
    opt.step()


def _mlp_state(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).state_dict()


def test_training_flag_attributes_hooks_and_untracked_models(counted):
    model = _Scaled().eval()
    x = torch.randn(2, 3)
    base = _same(model, x - 0.1, x + 0.1)
    model.train()
    assert torch.allclose(_same(model, x - 0.1, x + 0.1)[1], base[1] * 2)
    model.eval()
    model.scale = 3.0
    assert torch.allclose(_same(model, x - 0.1, x + 0.1)[1], base[1] * 3)
    h = model.lin.register_forward_hook(lambda mod, inp, out: out + 100)
    assert torch.allclose(_same(model, x - 0.1, x + 0.1)[1], base[1] * 3 + 300)
    h.remove()
    n = len(counted)
    model.extra = [1, 2]  # an attribute the cache cannot track: prepared afresh every call
    _same(model, x - 0.1, x + 0.1)
    _same(model, x - 0.1, x + 0.1)
    assert len(counted) == n + 2  # prepared afresh on both calls
    model.forward = lambda inp: model.lin(inp) * -1.0  # a replaced forward
    lo, hi = bf.compute_bounds(model, x - 0.1, x + 0.1, method="crown")
    assert torch.allclose(hi, -_fresh(_Scaled_copy(model), (x - 0.1).double(), (x + 0.1).double(), "crown").lower)


def _Scaled_copy(model):
    m = copy.deepcopy(model)
    del m.forward
    m.scale = 1.0
    return m


def test_cache_is_bounded_and_cleared(counted):
    models = [_mlp() for _ in range(api.ONE_SHOT_CACHE + 2)]
    x = torch.randn(2, 3)
    for m in models:
        bf.compute_bounds(m, x, x + 0.1, method="crown")
    assert len(api._CACHE) == api.ONE_SHOT_CACHE
    bf.clear_cache()
    assert len(api._CACHE) == 0
