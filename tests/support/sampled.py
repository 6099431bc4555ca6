"""The linear-domain tests' models (MLPs with ReLU, LeakyReLU, sigmoid/tanh; CNNs with batch norm,
max and average pooling) and their sampled and attacked points: shared with the solver tests."""

from __future__ import annotations

import torch
from torch import nn

from tests.support.models import init_bn

D = torch.float64


class SmallCNN(nn.Module):
    def __init__(self, pool: str = "max") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv1(x))))
        x = torch.relu(self.conv2(x))
        return self.head(torch.flatten(x, 1))


def linear_models():
    torch.manual_seed(0)
    return {
        "mlp-relu": (
            nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)),
            (6, 4),
        ),
        "mlp-leaky": (nn.Sequential(nn.Linear(4, 10), nn.LeakyReLU(0.1), nn.Linear(10, 3)), (6, 4)),
        "mlp-sigmoid-tanh": (
            nn.Sequential(nn.Linear(3, 10), nn.Sigmoid(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 2)),
            (5, 3),
        ),
        "cnn-maxpool-bn": (init_bn(SmallCNN("max")), (3, 1, 8, 8)),
        "cnn-avgpool": (SmallCNN("avg").eval(), (3, 1, 8, 8)),
    }


def attack(model, x, lo_x, hi_x, w, steps=30):
    """Projected sign-gradient ascent on sum(w * y) from the centre and random starts."""
    pts = []
    for start in (x, lo_x + (hi_x - lo_x) * torch.rand_like(x)):
        z = start.clone()
        for _ in range(steps):
            z.requires_grad_(True)
            (model(z) * w).sum().backward()
            z = torch.minimum(torch.maximum(z.detach() + 0.1 * (hi_x - lo_x) * z.grad.sign(), lo_x), hi_x)
        pts.append(z.detach())
    return pts


def sampled_points(model, x, eps, n=200):
    lo_x, hi_x = x - eps, x + eps
    g = torch.Generator().manual_seed(0)
    pts = [lo_x, hi_x, x]
    pts += [torch.where(torch.rand(x.shape, generator=g) < 0.5, lo_x, hi_x) for _ in range(40)]
    pts += [lo_x + (hi_x - lo_x) * torch.rand(x.shape, generator=g, dtype=D) for _ in range(n - 43)]
    out_dim = model(x).shape[1]
    for k in range(out_dim):
        for sign in (1.0, -1.0):
            w = torch.zeros(x.shape[0], out_dim, dtype=D)
            w[:, k] = sign
            pts += attack(model, x, lo_x, hi_x, w)
    return pts


def assert_weight_samples_inside(model, params, x, eps, res, n, corners_every, seed=6):
    """``n`` parameter vectors from the interval ``params`` (every ``corners_every``-th a random
    corner, the others uniform), each with an input drawn from the l-inf ball of radius ``eps``
    around ``x``: every output lies inside each ``(lo, hi)`` of ``res``."""
    from torch.func import functional_call

    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        if i % corners_every == 0:
            p = {k: torch.where(torch.rand(t.shape, generator=g) < 0.5, t.lower, t.upper) for k, t in params.items()}
        else:
            p = {
                k: t.lower + (t.upper - t.lower) * torch.rand(t.shape, generator=g, dtype=D) for k, t in params.items()
            }
        xs = x + (torch.rand(x.shape, generator=g, dtype=D) * 2 - 1) * eps
        with torch.no_grad():
            y = functional_call(model, p, (xs,))
        for lo, hi in res.values():
            assert (y >= lo - 1e-9).all() and (y <= hi + 1e-9).all()
