"""Solver-based certified training (MIBP-Cert): replay soundness for every method, the
tightness order mibp <= milp <= lp <= interval, exactness against brute force, executors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import boundflow.train as T
from boundflow.encode.training_step import solver_step
from boundflow.models import hidden_mlp as mlp
from solvers.executor import make_executor
from tests.support.replay import concrete_datasets, replay

D = torch.float64


def _moons(n: int):
    d = T.load_dataset("moons", n_samples=200)
    return d.x_train[:n], d.y_train[:n]


@pytest.mark.parametrize(
    "method,loss,decompose",
    [
        ("lp", "bce", True),
        ("lp", "bce", 3),
        ("lp", "mse", False),
        ("milp", "hinge", 3),
        ("milp", "hinge", True),
        ("milp", "bce", False),
        ("mibp", "mse", True),
        ("mibp", "hinge", False),
    ],
)
def test_replay_ends_inside_the_solver_box(method, loss, decompose):
    """Two epochs on 16 points (one on 8 for the exact bilinear program, with a time limit per
    solve so that stopped solves are exercised too)."""
    n, epochs, limit = (8, 1, 0.5) if method == "mibp" else (16, 2, None)
    x, y = _moons(n)
    model = mlp(2, 1, 4 if method != "mibp" else 3, 2, 0)
    cfg = T.TrainConfig(
        epochs=epochs, lr=0.3, batch_size=4 if method == "mibp" else 8, loss=loss, weight_decay=0.01,
        step=method, decompose=decompose, time_limit=limit,
    )  # fmt: skip
    data = T.linf(x, y, 0.03)
    bounds = T.certified_training(model, data, cfg)
    interval = T.certified_training(
        model, data, T.TrainConfig(epochs=epochs, lr=0.3, batch_size=cfg.batch_size, loss=loss, weight_decay=0.01)
    )
    assert bounds.mean_width() <= interval.mean_width() + 1e-12
    for xs in concrete_datasets(model, data, loss, n=24):
        final = replay(model, xs, y, cfg)
        assert bounds.contains(final, atol=1e-9), (method, loss)
    assert bounds.history[-1]["solves"] > 0


def _one_step(mode, decompose, loss="mse"):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).to(D)
    lo = {n: p.detach() - 0.02 for n, p in model.named_parameters()}
    hi = {n: p.detach() + 0.02 for n, p in model.named_parameters()}
    x, y = _moons(6)
    return (
        model,
        lo,
        hi,
        x,
        y,
        solver_step(model, lo, hi, x - 0.05, x + 0.05, y, loss, 0.3, 0.0, mode, decompose=decompose),
    )


def test_grouped_programs_sit_between_per_sample_and_joint():
    """Programs of G samples relax the joint program less than per-sample programs do: the
    LP box of one step (6 samples) narrows from per-sample programs to groups of 2 or 3 to
    the joint program (each coarser split relaxes a finer one's coupling less)."""
    boxes = {g: _one_step("lp", g)[-1] for g in (True, 2, 3, False)}
    tol = 1e-7
    order = [True, 2, 3, False]  # 2 and 3 are not nested (groups 2+2+2 vs 3+3), each sits between
    for a, b in ((True, 2), (True, 3), (2, False), (3, False)):
        for n in boxes[a][0]:
            assert (boxes[b][0][n] >= boxes[a][0][n] - tol).all(), (a, b, n)
            assert (boxes[b][1][n] <= boxes[a][1][n] + tol).all(), (a, b, n)
    widths = [sum(float((boxes[g][1][n] - boxes[g][0][n]).sum()) for n in boxes[g][0]) for g in order]
    assert widths[0] > widths[1] and widths[0] > widths[2] and min(widths[1], widths[2]) > widths[3]
    with pytest.raises(ValueError, match="group size"):
        T.TrainConfig(epochs=1, lr=0.1, batch_size=4, step="lp", loss="mse", decompose=0)


@pytest.mark.parametrize("decompose", [True, False])
def test_tightness_order_on_one_step(decompose):
    from torch.func import functional_call

    from boundflow.domains.interval import IntervalTensor
    from boundflow.train.losses import bounded_loss
    from boundflow.train.optim import IntervalSGD

    res = {m: _one_step(m, decompose)[-1] for m in ("lp", "milp", "mibp")}
    model, lo, hi, x, y, _ = _one_step("lp", decompose)
    params = {n: IntervalTensor(lo[n].clone(), hi[n].clone(), requires_grad=True) for n in lo}
    bounded_loss(functional_call(model, params, (IntervalTensor(x - 0.05, x + 0.05),)), y, "mse").backward()
    IntervalSGD(params, 0.3).step()
    tol = 1e-6
    for n in lo:
        assert (res["lp"][0][n] >= params[n].lower - tol).all() and (res["lp"][1][n] <= params[n].upper + tol).all()
        assert (res["milp"][0][n] >= res["lp"][0][n] - tol).all() and (res["milp"][1][n] <= res["lp"][1][n] + tol).all()
        assert (res["mibp"][0][n] >= res["milp"][0][n] - tol).all()
        assert (res["mibp"][1][n] <= res["milp"][1][n] + tol).all()
    w = {m: sum(float((r[1][n] - r[0][n]).sum()) for n in lo) for m, r in res.items()}
    w_int = sum(float((params[n].upper - params[n].lower).sum()) for n in lo)
    assert w["lp"] < w_int  # the program keeps dependencies the interval step loses


def test_mibp_equals_brute_force_on_one_hidden_neuron():
    """p' over a grid of (w1, b1, w2, b2, x) vs the exact program: contains every grid value
    and is within the grid's resolution of its extremes; the McCormick relaxation is not."""
    m = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).to(D)
    c = {"0.weight": [[0.8]], "0.bias": [-0.5], "2.weight": [[1.2]], "2.bias": [0.1]}
    lo = {n: torch.tensor(v, dtype=D) - 0.1 for n, v in c.items()}
    hi = {n: torch.tensor(v, dtype=D) + 0.1 for n, v in c.items()}
    x0, eps, lr = 0.7, 0.15, 0.5
    y = torch.tensor([1])
    xl, xh = torch.tensor([[x0 - eps]], dtype=D), torch.tensor([[x0 + eps]], dtype=D)
    res = {md: solver_step(m, lo, hi, xl, xh, y, "mse", lr, 0.0, md)[:2] for md in ("lp", "mibp")}
    n = 21
    axes = [torch.linspace(lo[k].item(), hi[k].item(), n, dtype=D) for k in c] + [
        torch.linspace(x0 - eps, x0 + eps, n, dtype=D)
    ]
    W1, B1, W2, B2, X = torch.meshgrid(*axes, indexing="ij")
    z1 = W1 * X + B1
    h = z1.clamp(min=0)
    d2 = 2 * (W2 * h + B2 - 1.0)
    d1 = W2 * d2 * (z1 > 0)
    new = {"0.weight": W1 - lr * d1 * X, "0.bias": B1 - lr * d1, "2.weight": W2 - lr * d2 * h, "2.bias": B2 - lr * d2}
    gaps = {"lp": 0.0, "mibp": 0.0}
    for k, v in new.items():
        bf_lo, bf_hi = v.min().item(), v.max().item()
        for md, (r_lo, r_hi) in res.items():
            assert r_lo[k].item() <= bf_lo + 1e-9 and r_hi[k].item() >= bf_hi - 1e-9, (md, k)
            gaps[md] = max(gaps[md], bf_lo - r_lo[k].item(), r_hi[k].item() - bf_hi)
    assert gaps["mibp"] <= 0.01, gaps  # grid spacing 0.01 (parameters), 0.015 (x)
    assert gaps["lp"] >= gaps["mibp"] + 0.01, gaps


def test_executors_give_identical_results():
    model, lo, hi, x, y, (ref_lo, ref_hi, _) = _one_step("lp", True)
    ex = make_executor("process", 2)
    try:
        p_lo, p_hi, st = solver_step(model, lo, hi, x - 0.05, x + 0.05, y, "mse", 0.3, 0.0, "lp", ex)
    finally:
        ex.close()
    for n in ref_lo:
        assert torch.equal(p_lo[n], ref_lo[n]) and torch.equal(p_hi[n], ref_hi[n])
    assert st["solves"] == 2 * 17 * 6


def test_ray_executor_gives_identical_results():
    pytest.importorskip("ray")
    model, lo, hi, x, y, (ref_lo, ref_hi, _) = _one_step("lp", True)
    ex = make_executor("ray", 2)
    r_lo, r_hi, _ = solver_step(model, lo, hi, x - 0.05, x + 0.05, y, "mse", 0.3, 0.0, "lp", ex)
    for n in ref_lo:
        assert torch.equal(r_lo[n], ref_lo[n]) and torch.equal(r_hi[n], ref_hi[n])


def test_unsupported_settings_raise_clear_errors():
    x, y = _moons(16)
    with pytest.raises(ValueError, match="supports losses hinge, bce, mse, not 'cross_entropy'"):
        T.TrainConfig(epochs=1, lr=0.1, batch_size=8, loss="cross_entropy", step="lp")
    with pytest.raises(ValueError, match="without momentum"):
        T.TrainConfig(epochs=1, lr=0.1, batch_size=8, momentum=0.9, step="milp")
    with pytest.raises(ValueError, match="unknown training step 'exact'"):
        T.TrainConfig(epochs=1, lr=0.1, batch_size=8, step="exact")
    cfg = T.TrainConfig(epochs=1, lr=0.1, batch_size=8, step="lp")
    with pytest.raises(ValueError, match="threat is 'poison"):
        T.certified_training(mlp(2, 1, 4, 2, 0), T.poison(x, y, 1, 0.1), cfg)

    class Net(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="needs an nn.Sequential"):
        T.certified_training(Net(), T.linf(x, y, 0.1), cfg)
    with pytest.raises(ValueError, match="module '1' is Tanh"):
        T.certified_training(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), T.linf(x, y, 0.1), cfg)


def test_cli_trains_with_a_solver_method(tmp_path):
    from boundflow.cli import main

    out = tmp_path / "run"
    rc = main(
        [
            "train", "--dataset", "moons", "--n-samples", "40", "--epochs", "1", "--batch-size", "10",
            "--hidden", "4", "--epsilon", "0.01", "--method", "lp", "--workers", "1", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["method"] == "lp"
    assert metrics["history"][0]["solves"] > 0


def test_joint_step_shrinks_where_the_gradient_depends_on_the_parameter():
    """MSE on a linear model: the update of ``w`` is ``(1 - 2 lr mean x^2) w + ...``, so the
    joint program (all samples sharing the parameters) narrows the box where interval arithmetic
    widens it.  Measured shrinking count, and concrete steps from the box land inside it."""
    from torch import nn

    from boundflow.encode.training_step import solver_step
    from boundflow.train.losses import plain_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1)).double()
    nom = {n: p.detach().clone() for n, p in model.named_parameters()}
    lo = {n: t - 0.3 for n, t in nom.items()}
    hi = {n: t + 0.3 for n, t in nom.items()}
    x = torch.randn(8, 2, dtype=torch.float64) * 2
    y = (x[:, 0] > 0).long()
    lr = 0.2
    nl, nh, _ = solver_step(model, lo, hi, x, x, y, "mse", lr, 0.0, "lp", decompose=False)
    shrunk = {n: (nh[n] - nl[n]) < (hi[n] - lo[n]) - 1e-9 for n in nl}
    assert sum(int(v.sum()) for v in shrunk.values()) >= 1  # strictly narrower than before the step
    g = torch.Generator().manual_seed(1)
    for _ in range(200):  # concrete parameters in the box, one concrete SGD step
        p = {n: (lo[n] + (hi[n] - lo[n]) * torch.rand(lo[n].shape, generator=g, dtype=torch.float64)) for n in lo}
        p = {n: t.requires_grad_(True) for n, t in p.items()}
        loss = plain_loss(torch.func.functional_call(model, p, (x,)), y, "mse")
        grads = torch.autograd.grad(loss, list(p.values()))
        for (n, t), gr in zip(p.items(), grads, strict=True):
            after = t.detach() - lr * gr
            assert bool((after >= nl[n] - 1e-9).all() and (after <= nh[n] + 1e-9).all()), n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encoded_forward_pass_is_the_network_at_every_fixed_point(seed):
    """The training step's forward half is the one network encoder's: with the shared weight
    variables and each sample's inputs fixed to a point of their boxes (random architecture,
    boxes and point), every output, pre-activation and indicator of every sample has one
    feasible value, the network's; so the weights reach every use (the transposed weight of
    each layer included), and a variable not tied to them would leave a range."""
    from boundflow.domains.interval.tensor import IntervalTensor
    from boundflow.domains.linear.crown import prepare
    from boundflow.encode.network import encode_forward
    from boundflow.graph import capture
    from solvers.executor import minimize_all
    from solvers.program import Program

    g = torch.Generator().manual_seed(seed)
    sizes = [int(v) for v in torch.randint(2, 5, (int(torch.randint(2, 4, (1,), generator=g)),), generator=g)]
    mods = []
    for a, b in zip(sizes, sizes[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*mods[:-1]).double()
    names = [n for n, _ in model.named_parameters()]
    rad = {n: 0.05 * torch.rand(p.shape, generator=g, dtype=D) for n, p in model.named_parameters()}
    lower = {n: p.detach() - rad[n] for n, p in model.named_parameters()}
    upper = {n: p.detach() + rad[n] for n, p in model.named_parameters()}
    graph = capture(model, torch.zeros(1, sizes[0], dtype=D), {n: IntervalTensor(lower[n], upper[n]) for n in names})
    prog = Program()
    P = {n: prog.var(lower[n].numpy(), upper[n].numpy()) for n in names}
    point = {n: lower[n] + torch.rand(lower[n].shape, generator=g, dtype=D) * (upper[n] - lower[n]) for n in names}
    for n in names:
        prog.tighten(P[n], point[n].numpy(), point[n].numpy())
    samples = []
    for _ in range(2):
        lo = torch.randn(1, sizes[0], generator=g, dtype=D)
        hi = lo + torch.rand(1, sizes[0], generator=g, dtype=D)
        fw = encode_forward(graph, prepare(graph, lo, hi, sparse=False), prog, P)
        x = lo + torch.rand(lo.shape, generator=g, dtype=D) * (hi - lo)
        prog.tighten(fw.input, x[0].numpy(), x[0].numpy())
        samples.append((fw, x))
    for fw, x in samples:
        h, pre, ind = x, [], []
        for name, m in model.named_children():  # the network at the fixed point
            if isinstance(m, nn.Linear):
                h = h @ point[f"{name}.weight"].T + point[f"{name}.bias"]
            elif isinstance(m, nn.ReLU):
                pre.append(h[0].clone())
                ind.append((h[0] > 0).double())
                h = torch.relu(h)
        want = [h[0]] + pre + ind
        got = [fw.output] + [z for z, _, _ in fw.relus] + [a for _, _, a in fw.relus]
        assert len(fw.relus) == len(sizes) - 2
        objectives = [(np.array([int(v)]), np.array([sgn])) for var in got for v in var for sgn in (1.0, -1.0)]
        out = minimize_all([(prog, objectives)], "milp")[0]
        lo_b = np.array([o.bound for o in out[0::2]])
        hi_b = -np.array([o.bound for o in out[1::2]])
        value = torch.cat(want).numpy()
        assert np.all(lo_b <= value + 1e-6) and np.all(value <= hi_b + 1e-6), (lo_b, value, hi_b)
        assert np.all(hi_b - lo_b <= 1e-5), (lo_b, hi_b)
