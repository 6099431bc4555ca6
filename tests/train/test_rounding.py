"""Floating-point-sound certified training: under ``boundflow.sound_rounding()`` the box holds the
parameters that SGD reaches in *exact* arithmetic on the float64 data and start (replayed here in
60-digit ``mpmath``), not only those of a float64 run; without it, a box from exact data is a
single float64 point that the exact run leaves.  Abstract Gradient Training states that its
bounds are not sound under rounding."""

from __future__ import annotations

import mpmath
import pytest
import torch

import boundflow
import boundflow.train as T
from boundflow.models import hidden_mlp

mpmath.mp.dps = 60
M = mpmath.mpf


def _exact_grads(p, x, y, loss, clip):
    """Per-sample gradients of a 2-layer ReLU MLP (one output) in mpmath, each clamped."""
    w1, b1, w2, b2 = p["0.weight"], p["0.bias"], p["2.weight"], p["2.bias"]
    out = []
    for xi, yi in zip(x, y):
        z1 = [sum(w1[j][i] * xi[i] for i in range(len(xi))) + b1[j] for j in range(len(b1))]
        h = [z if z > 0 else M(0) for z in z1]
        z2 = sum(w2[0][j] * h[j] for j in range(len(h))) + b2[0]
        dz2 = 1 / (1 + mpmath.exp(-z2)) - yi if loss == "bce" else 2 * (z2 - yi)
        g = {
            "2.weight": [[dz2 * h[j] for j in range(len(h))]],
            "2.bias": [dz2],
            "0.weight": [
                [(w2[0][j] * dz2 if z1[j] > 0 else M(0)) * xi[i] for i in range(len(xi))] for j in range(len(h))
            ],
            "0.bias": [w2[0][j] * dz2 if z1[j] > 0 else M(0) for j in range(len(h))],
        }
        if clip is not None:
            c = M(clip)
            g = {n: _map(v, lambda t: min(max(t, -c), c)) for n, v in g.items()}
        out.append(g)
    return out


def _map(v, f):
    return [_map(t, f) for t in v] if isinstance(v, list) else f(v)


def _exact_sgd(model, x, y, cfg: T.TrainConfig, drop=lambda idx: idx):
    """SGD in exact arithmetic (60 digits) from the float64 start on the float64 data;
    ``drop`` picks the samples of a batch that stay."""
    p = {n: _map(t.detach().double().tolist(), M) for n, t in model.named_parameters()}
    xs = [[M(v) for v in row] for row in x.tolist()]
    ys = [M(v) for v in y.tolist()]
    lr = M(cfg.lr)
    for epoch in range(cfg.epochs):
        for idx in T.batch_indices(len(x), cfg, epoch):
            keep = drop(idx.tolist())
            gs = _exact_grads(p, [xs[i] for i in keep], [ys[i] for i in keep], cfg.loss, cfg.clip)
            for n in p:
                mean = _map(gs[0][n], lambda t: M(0))
                for g in gs:
                    mean = _zip(mean, g[n], lambda a, b: a + b)
                p[n] = _zip(p[n], mean, lambda a, b: a - lr * b / len(keep))
    return p


def _zip(a, b, f):
    return [_zip(s, t, f) for s, t in zip(a, b)] if isinstance(a, list) else f(a, b)


def _inside(bounds, exact) -> bool:
    for n, v in exact.items():
        lo, hi = bounds.lower[n].reshape(-1).tolist(), bounds.upper[n].reshape(-1).tolist()
        flat = _flatten(v)
        if any(not (M(a) <= e <= M(b)) for a, e, b in zip(lo, flat, hi)):
            return False
    return True


def _flatten(v):
    return [u for t in v for u in _flatten(t)] if isinstance(v, list) else [v]


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, (x[:, 0] * x[:, 1] > 0).long(), torch.sin(x.sum(1))


@pytest.mark.parametrize("loss,clip", [("bce", None), ("mse", None), ("bce", 0.05)])
def test_exact_data_box_holds_the_exact_arithmetic_run(loss, clip):
    x, yc, yr = _data()
    y = yc if loss == "bce" else yr
    model = hidden_mlp(2, 1, 3, 2, seed=1)
    cfg = T.TrainConfig(epochs=2, lr=0.7, batch_size=6, loss=loss, clip=clip)
    data = T.linf(x, y, 0.0, regression=loss == "mse")
    exact = _exact_sgd(model, x, y, cfg)
    with boundflow.sound_rounding():
        sound = T.certified_training(model, data, cfg)
    assert _inside(sound, exact)
    assert 0 < sound.mean_width() < 1e-12  # a few ulps, not a wide box
    plain = T.certified_training(model, data, cfg)  # exact data, no rounding: a float64 point
    assert plain.mean_width() == 0 and not _inside(plain, exact)


@pytest.mark.parametrize("budget", ["poison", "removal", "substitution"])
def test_budgets_under_sound_rounding_hold_exact_runs(budget):
    x, y, _ = _data(seed=2)
    model = hidden_mlp(2, 1, 3, 2, seed=3)
    clip = 0.2 if budget == "substitution" else None
    cfg = T.TrainConfig(epochs=2, lr=0.5, batch_size=6, loss="bce", clip=clip)
    data = {"poison": lambda: T.poison(x, y, k=1, eps=0.05), "removal": lambda: T.removal(x, y, 2),
            "substitution": lambda: T.substitution(x, y, 1)}[budget]()  # fmt: skip
    with boundflow.sound_rounding():
        bounds = T.certified_training(model, data, cfg)
    assert _inside(bounds, _exact_sgd(model, x, y, cfg))  # the nominal dataset
    if budget == "removal":
        assert _inside(bounds, _exact_sgd(model, x, y, cfg, drop=lambda idx: idx[2:]))
