"""Zero-width intervals must reproduce plain torch: values and gradients to 1e-6."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import boundflow as bf
from tests.support.models import SmallCNN, SmoothNet, init_bn, mlp

MODELS = {
    "mlp": (lambda: mlp(), (4, 6), "ce"),
    "cnn": (lambda: init_bn(SmallCNN()), (3, 1, 8, 8), "ce"),
    "smooth": (lambda: SmoothNet(), (4, 5), "mse"),
}


def _loss(out: torch.Tensor, kind: str, classes: int) -> torch.Tensor:
    n = out.shape[0]
    if kind == "ce":
        return F.cross_entropy(out, torch.arange(n) % classes)
    return F.mse_loss(out, torch.full(out.shape, 1.0 / classes, dtype=out.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_zero_width_matches_torch(name, dtype):
    torch.manual_seed(0)
    factory, shape, loss_kind = MODELS[name]
    model = factory().to(dtype)
    x = torch.randn(*shape, dtype=dtype)

    # plain torch
    x_ref = x.clone().requires_grad_(True)
    params_ref = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    out_ref = functional_call(model, params_ref, (x_ref,))
    loss_ref = _loss(out_ref, loss_kind, out_ref.shape[1])
    loss_ref.backward()

    # zero-width intervals
    xi = bf.IntervalTensor(x, x.clone(), requires_grad=True)
    params = bf.interval_parameters(model, 0.0)
    out = functional_call(model, params, (xi,))
    loss = _loss(out, loss_kind, out.shape[1])
    loss.backward()

    def close(iv, ref, what):
        assert isinstance(iv, bf.IntervalTensor), what
        torch.testing.assert_close(iv.lower, ref, atol=1e-6, rtol=1e-6, msg=f"{what} lower")
        torch.testing.assert_close(iv.upper, ref, atol=1e-6, rtol=1e-6, msg=f"{what} upper")

    close(out, out_ref.detach(), "output")
    close(loss, loss_ref.detach(), "loss")
    close(xi.grad, x_ref.grad, "input gradient")
    for n in params:
        close(params[n].grad, params_ref[n].grad, f"gradient of {n}")


def test_compute_bounds_zero_width_equals_forward():
    torch.manual_seed(1)
    model = init_bn(SmallCNN())
    x = torch.randn(2, 1, 8, 8)
    lo, hi = bf.compute_bounds(model, x, x)
    ref = model.double()(x.double())
    torch.testing.assert_close(lo, ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(hi, ref, atol=1e-9, rtol=0)
