"""``sound_rounding``: float32 bounds must contain the (float64-accurate) real value, which
plain float32 interval evaluation does not guarantee."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

import boundflow as bf
from tests.support.models import SmallCNN, SmoothNet, init_bn, mlp


def _ref_and_bounds(model, x32, eps, sound: bool, loss: bool = False):
    xi = bf.IntervalTensor.from_eps(x32, eps)
    params = bf.interval_parameters(model, 0.0, requires_grad=False)
    with bf.sound_rounding(sound):
        out = functional_call(model, params, (xi,))
        if loss:
            out = F.cross_entropy(out, torch.zeros(out.shape[0], dtype=torch.long))
    return out


def _samples_inside(model, x32, eps, out, n=100):
    model64 = model.double()
    g = torch.Generator().manual_seed(0)
    ok = True
    for i in range(n):
        if i == 0:
            xs = x32.double()
        else:
            xs = x32.double() + (torch.rand(x32.shape, generator=g, dtype=torch.float64) * 2 - 1) * eps
            # keep the sample inside the float32 box exactly
            xs = torch.minimum(torch.maximum(xs, (x32 - eps).double()), (x32 + eps).double())
        y = model64(xs)
        ok &= bool(((y >= out.lower.double()) & (y <= out.upper.double())).all())
    model.float()
    return ok


def test_zero_width_float32_misses_the_real_value_without_sound_rounding():
    torch.manual_seed(0)
    model = torch.nn.Linear(512, 64)
    x = torch.randn(8, 512)
    plain = _ref_and_bounds(model, x, 0.0, sound=False)
    sound = _ref_and_bounds(model, x, 0.0, sound=True)
    ref = model.double()(x.double())
    plain_ok = ((ref >= plain.lower.double()) & (ref <= plain.upper.double())).all()
    sound_ok = ((ref >= sound.lower.double()) & (ref <= sound.upper.double())).all()
    assert not plain_ok, "expected float32 rounding to put some exact value outside a zero-width result"
    assert sound_ok


def test_sound_rounding_only_widens():
    torch.manual_seed(1)
    model = init_bn(SmallCNN())
    x = torch.rand(2, 1, 8, 8)
    plain = _ref_and_bounds(model, x, 0.01, sound=False)
    sound = _ref_and_bounds(model, x, 0.01, sound=True)
    assert (sound.lower <= plain.lower).all() and (sound.upper >= plain.upper).all()
    assert (sound.lower < plain.lower).any()


def test_float32_sound_bounds_contain_float64_evaluations():
    torch.manual_seed(2)
    for model, shape in ((mlp(64, 128, 10), (4, 64)), (init_bn(SmallCNN()), (2, 1, 8, 8)), (SmoothNet(), (3, 5))):
        x = torch.randn(*shape)
        out = _ref_and_bounds(model, x, 1e-3, sound=True)
        assert _samples_inside(model, x, 1e-3, out)


def test_sound_rounding_on_losses_and_gradients():
    """Interval gradients in float32 under sound_rounding contain the float64 gradient."""
    torch.manual_seed(3)
    model = mlp(32, 64, 5)
    x = torch.randn(6, 32)
    y = torch.arange(6) % 5
    with bf.sound_rounding():
        params = bf.interval_parameters(model, 0.0)
        xi = bf.IntervalTensor.exact(x)
        loss = F.cross_entropy(functional_call(model, params, (xi,)), y)
        loss.backward()
    m64 = model.double()
    p64 = {n: p.detach().double().requires_grad_(True) for n, p in m64.named_parameters()}
    ref = F.cross_entropy(functional_call(m64, p64, (x.double(),)), y)
    ref.backward()
    assert loss.lower.double() <= ref <= loss.upper.double()
    for n, p in params.items():
        g = p64[n].grad
        assert ((g >= p.grad.lower.double()) & (g <= p.grad.upper.double())).all(), n


def test_context_manager_nests_and_resets():
    from boundflow.rounding import rounding_enabled

    assert not rounding_enabled()
    with bf.sound_rounding():
        assert rounding_enabled()
        with bf.sound_rounding(False):
            assert not rounding_enabled()
        assert rounding_enabled()
    assert not rounding_enabled()
