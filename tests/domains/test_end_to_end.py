"""Interval inputs *and* interval parameters through whole models, ``loss.backward()``: the
loss and the gradient of every concrete model/input drawn from the boxes lie inside."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import boundflow as bf
from tests.support.containment import Iv, check_containment
from tests.support.models import SmallCNN, SmoothNet, init_bn, mlp


def _setup(model: torch.nn.Module, x: torch.Tensor, eps_x: float, eps_p: float):
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    args = [Iv(x - eps_x, x + eps_x)]
    for _, p in model.named_parameters():
        p = p.detach()
        args.append(Iv(p - eps_p, p + eps_p))
    return model, names, args


@pytest.mark.parametrize(
    "name,factory,shape,loss",
    [
        ("mlp", lambda: mlp(), (5, 6), "ce"),
        ("cnn", lambda: init_bn(SmallCNN()), (3, 1, 8, 8), "ce"),
        ("smooth", lambda: SmoothNet(), (4, 5), "mse"),
    ],
)
def test_interval_inputs_and_parameters(name, factory, shape, loss):
    torch.manual_seed(3)
    model, names, args = _setup(factory(), torch.randn(*shape, dtype=torch.float64), 0.05, 0.01)
    n_out = 3 if name != "smooth" else 4
    y = torch.arange(shape[0]) % n_out

    def fn(x, *params):
        out = functional_call(model, dict(zip(names, params)), (x,))
        if loss == "ce":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, torch.full(out.shape, 0.25, dtype=out.dtype))

    report = check_containment(fn, args, n_corners=60, n_random=140, attack_steps=5, seed=7)
    assert report.samples >= 200


def test_interval_parameters_api_gives_interval_grads():
    torch.manual_seed(0)
    model = mlp()
    params = bf.interval_parameters(model, radius={"0.weight": 0.05})
    assert set(params) == {n for n, _ in model.named_parameters()}
    assert torch.all(params["0.weight"].width > 0)
    assert params["2.bias"].is_exact()
    x = bf.IntervalTensor.from_eps(torch.randn(4, 6), 0.1)
    loss = F.cross_entropy(functional_call(model, params, (x,)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for name, p in params.items():
        assert isinstance(p.grad, bf.IntervalTensor), name
        assert p.grad.shape == p.shape
        assert (p.grad.lower <= p.grad.upper).all()
    with pytest.raises(KeyError, match="no parameter named"):
        bf.interval_parameters(model, radius={"nope": 0.1})


def test_gradient_accumulates_over_two_backward_calls():
    w = bf.IntervalTensor(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.5]), requires_grad=True)
    x = torch.tensor([1.0, -1.0])
    (w * x).sum().backward()
    first = (w.grad.lower.clone(), w.grad.upper.clone())
    (w * x).sum().backward()
    torch.testing.assert_close(w.grad.lower, 2 * first[0])
    torch.testing.assert_close(w.grad.upper, 2 * first[1])


def test_mixed_plain_and_interval_gradient_paths():
    """A plain leaf used both with an exact and with an interval operand gets an interval grad
    containing the true one."""
    x = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    w = bf.IntervalTensor(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([3.0, 2.5], dtype=torch.float64))
    y = (x * 2.0).sum() + (x * w).sum()
    y.backward()
    assert isinstance(x.grad, bf.IntervalTensor)
    torch.testing.assert_close(x.grad.lower, torch.tensor([3.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(x.grad.upper, torch.tensor([5.0, 4.5], dtype=torch.float64))


def test_compute_bounds_contains_samples():
    torch.manual_seed(2)
    model = init_bn(SmallCNN())
    x = torch.rand(2, 1, 8, 8)
    lo, hi = bf.compute_bounds(model, x - 0.02, x + 0.02)
    m64 = model.double()
    for _ in range(200):
        xs = (x + (torch.rand_like(x) * 2 - 1) * 0.02).double()
        y = m64(xs)
        assert (y >= lo - 1e-12).all() and (y <= hi + 1e-12).all()


def test_compute_bounds_with_interval_params_and_float32():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(3, 6)
    params = bf.interval_parameters(model, 0.01, requires_grad=False)
    lo, hi = bf.compute_bounds(model, x - 0.1, x + 0.1, params=params)
    lo0, hi0 = bf.compute_bounds(model, x - 0.1, x + 0.1)
    assert (lo <= lo0).all() and (hi >= hi0).all()
    lo32, hi32 = bf.compute_bounds(model, x - 0.1, x + 0.1, dtype=None)
    assert lo32.dtype == torch.float32
    with pytest.raises(KeyError, match="not parameters"):
        bf.compute_bounds(model, x, x, params={"bogus": torch.zeros(1)})
