"""Certified training on regression targets (float labels, ``mse``): replays of ordinary SGD on
datasets of the threat model end inside the box, the certified error bounds hold for parameters
and inputs of the box, and the refusals name what is wrong."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import boundflow.train as T
from boundflow.models import hidden_mlp as mlp
from boundflow.train.losses import plain_loss
from tests.support.replay import replay

D = torch.float64


def _regression(n: int, d: int, outputs: int, seed: int):
    """A smooth target of random features, with noise (float targets (n,) or (n, outputs))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=D) * 2 - 1
    w = torch.randn(d, outputs, generator=g, dtype=D)
    y = torch.sin(x @ w) + 0.05 * torch.randn(n, outputs, generator=g, dtype=D)
    return x, (y[:, 0] if outputs == 1 else y)


@pytest.mark.parametrize("outputs,layers,momentum", [(1, 2, 0.0), (2, 2, 0.5), (1, 3, 0.0)])
def test_regression_replays_end_inside_the_box(outputs, layers, momentum):
    """Every sample's features within eps (``linf``), random architectures and output counts:
    ordinary SGD on corners, random points and the nominal data ends inside the box."""
    x, y = _regression(48, 3, outputs, seed=outputs + layers)
    model = mlp(3, outputs, 6, layers, seed=layers).to(D)
    cfg = T.TrainConfig(epochs=2, lr=0.1, batch_size=12, loss="mse", momentum=momentum)
    data = T.linf(x, y, 0.02, regression=True)
    assert data.regression and data.y.dtype == D
    bounds = T.certified_training(model, data, cfg)
    g = torch.Generator().manual_seed(7)
    for trial in range(12):
        if trial == 0:
            xs = x
        elif trial % 2:
            xs = torch.where(torch.rand(x.shape, generator=g) < 0.5, data.lower, data.upper)
        else:
            xs = data.lower + (data.upper - data.lower) * torch.rand(x.shape, generator=g, dtype=D)
        assert bounds.contains(replay(model, xs, y, cfg), atol=1e-9), trial


def test_regression_poisoning_respects_its_budget():
    """At most k samples per batch move (Abstract Gradient Training's regression setting):
    replays with k moved samples end inside the box, which is narrower than every sample moving."""
    x, y = _regression(40, 4, 1, seed=3)
    model = mlp(4, 1, 8, 2, seed=0).to(D)
    cfg = T.TrainConfig(epochs=2, lr=0.05, batch_size=10, loss="mse")
    data = T.poison(x, y, k=2, eps=0.05, regression=True)
    bounds = T.certified_training(model, data, cfg)
    g = torch.Generator().manual_seed(1)
    for trial in range(16):
        xs = x.clone()
        for idx in T.batch_indices(len(x), cfg, 0):
            chosen = idx[torch.randperm(len(idx), generator=g)[:2]]
            corner = torch.where(torch.rand(len(chosen), 4, generator=g) < 0.5, data.lower[chosen], data.upper[chosen])
            xs[chosen] = corner if trial % 2 else data.lower[chosen] + 0.3 * (data.upper[chosen] - data.lower[chosen])
        assert bounds.contains(replay(model, xs, y, cfg), atol=1e-9), trial
    everyone = T.certified_training(model, T.linf(x, y, 0.05, regression=True), cfg)
    assert bounds.mean_width() < everyone.mean_width()


def test_certified_error_bounds_hold_inside_the_box():
    """``error_bounds`` over a parameter box and test inputs within eps: the MSE of parameters
    sampled from the box (corners included) on inputs sampled from the balls lies in
    ``[mse_lower, mse_upper]``, each sample's squared error in its own bounds, and the MAE
    below ``mae_upper``; a point box gives the model's own MSE."""
    x, y = _regression(30, 3, 2, seed=5)
    model = mlp(3, 2, 6, 2, seed=1).to(D)
    g = torch.Generator().manual_seed(2)
    centre = {n: p.detach().clone() for n, p in model.named_parameters()}
    rad = {n: 0.03 * torch.rand(p.shape, generator=g, dtype=D) for n, p in centre.items()}
    lower = {n: centre[n] - rad[n] for n in centre}
    upper = {n: centre[n] + rad[n] for n in centre}
    eps = 0.01
    err = T.error_bounds(model, (lower, upper), x, y, eps)
    assert 0 <= err.mse_lower <= err.mse_upper
    for trial in range(40):
        pick = (
            (lambda lo, hi: torch.where(torch.rand(lo.shape, generator=g) < 0.5, lo, hi))
            if trial % 2
            else (lambda lo, hi: lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=D))
        )
        p = {n: pick(lower[n], upper[n]) for n in centre}
        xs = pick(x - eps, x + eps)
        with torch.no_grad():
            sq = ((functional_call(model, p, (xs,)) - y) ** 2).mean(1)
            ae = (functional_call(model, p, (xs,)) - y).abs().mean()
        assert err.mse_lower - 1e-12 <= float(sq.mean()) <= err.mse_upper + 1e-12
        assert bool((sq >= err.per_sample[0] - 1e-12).all() and (sq <= err.per_sample[1] + 1e-12).all())
        assert float(ae) <= err.mae_upper + 1e-12
    point = T.error_bounds(model, (centre, centre), x, y)
    with torch.no_grad():
        own = float(((model(x) - y) ** 2).mean())
    assert point.mse_lower == pytest.approx(own, abs=1e-12) and point.mse_upper == pytest.approx(own, abs=1e-12)


def test_regression_history_reports_certified_error():
    """With test data, each epoch's metrics hold the certified MSE bounds and the nominal MSE
    (no accuracy), and the nominal MSE lies inside them."""
    x, y = _regression(40, 3, 1, seed=8)
    model = mlp(3, 1, 6, 2, seed=2).to(D)
    cfg = T.TrainConfig(epochs=2, lr=0.1, batch_size=10, loss="mse")
    bounds = T.certified_training(model, T.linf(x[:32], y[:32], 0.01, regression=True), cfg, test=(x[32:], y[32:]))
    for h in bounds.history:
        assert "certified_accuracy" not in h
        assert h["certified_mse_lower"] <= h["nominal_mse"] <= h["certified_mse_upper"]


def test_regression_refusals_name_the_problem():
    x, y = _regression(10, 2, 1, seed=0)
    with pytest.raises(ValueError, match="loss='mse'"):
        T.certified_training(mlp(2, 1, 4, 2), T.linf(x, y, 0.0, regression=True), T.TrainConfig(1, 0.1, 5, "bce"))
    with pytest.raises(ValueError, match="integer class indices"):
        T.linf(x, y, 0.0)  # float targets without regression=True are not class labels
    bad = y.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="sample 3"):
        T.linf(x, bad, 0.0, regression=True)
    with pytest.raises(ValueError, match="label sets"):
        T.BoundedDataset(x, x, x, y, label_sets=torch.ones(10, 2, dtype=torch.bool))


def test_cli_trains_on_regression_targets(tmp_path, capsys):
    """``boundflow train --data file.npz --regression``: float targets, poisoning, certified
    error bounds in metrics.json; float targets without ``--regression`` are refused by name."""
    import json

    import numpy as np

    from boundflow.cli import main

    x, y = _regression(120, 3, 1, seed=4)
    data = tmp_path / "r.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--regression", "--threat", "poison", "--k", "2", "--epsilon", "0.01"]
    args += ["--epochs", "2", "--batch-size", "20", "--hidden", "6", "--lr", "0.05", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    f = m["final"]
    assert 0 <= f["certified_mse_lower"] <= f["certified_mse_upper"] and m["config"]["loss"] == "mse"
    assert all("certified_mse_upper" in h for h in m["history"])
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run2"), "--no-progress"]) == 2
    assert "boundflow train --regression" in capsys.readouterr().err


def test_solver_step_takes_regression_targets():
    """The LP training step (MIBP-Cert's program) with float targets, one per output: from a point
    box and exact data, its box contains the plain SGD step on the same batch."""
    from boundflow.encode.training_step import solver_step

    x, y = _regression(6, 2, 2, seed=9)
    model = mlp(2, 2, 3, 2, seed=3).to(D)
    p = {n: t.detach().clone() for n, t in model.named_parameters()}
    lo, hi, _ = solver_step(model, p, p, x, x, y, "mse", 0.1, 0.0, "lp")
    q = {n: t.clone().requires_grad_(True) for n, t in p.items()}
    plain_loss(functional_call(model, q, (x,)), y, "mse").backward()
    for n in p:
        step = p[n] - 0.1 * q[n].grad
        assert bool(((step >= lo[n] - 1e-7) & (step <= hi[n] + 1e-7)).all()), n
