"""Certified training under the budgets beyond feature poisoning: removal of up to k samples
per batch (certified unlearning), substitution of up to k samples (privacy-style bounds, with
per-sample gradient clipping), and clipping itself.  Every bound is checked by replaying
ordinary training, written here independently of the library (one backward pass per sample),
on datasets drawn from the threat model: random and attacked choices, over architectures and
losses."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import boundflow.train as T
from boundflow.models import hidden_mlp
from boundflow.train.losses import plain_loss

D = torch.float64


def _sample_grads(model, params, x, y, loss, clip):
    """Per-sample gradients of the per-sample loss, each clamped to [-clip, clip]."""
    out = []
    for i in range(len(x)):
        li = plain_loss(functional_call(model, params, (x[i : i + 1],)), y[i : i + 1], loss)
        g = torch.autograd.grad(li, list(params.values()))
        out.append([t.clamp(-clip, clip) if clip is not None else t for t in g])
    return out


def _replay(model, x, y, cfg: T.TrainConfig, choose) -> dict[str, torch.Tensor]:
    """Plain SGD where ``choose(epoch, idx, grads)`` returns, per batch, the per-sample
    gradient list to average (after removing or replacing samples)."""
    params = {n: p.detach().clone().to(D).requires_grad_(True) for n, p in model.named_parameters()}
    opt = torch.optim.SGD(list(params.values()), lr=cfg.lr, momentum=cfg.momentum)
    for epoch in range(cfg.epochs):
        for idx in T.batch_indices(len(x), cfg, epoch):
            grads = choose(epoch, idx, params)
            for j, p in enumerate(params.values()):
                p.grad = torch.stack([g[j] for g in grads]).mean(0)
            opt.step()
    return {n: p.detach() for n, p in params.items()}


def _data(kind: str, n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=D)
    if kind == "regression":
        return x, torch.sin(x.sum(1)) + 0.1 * torch.randn(n, generator=g, dtype=D), "mse", 1
    if kind == "offset":  # targets far below every output: the output bias's gradients all exceed the clip
        return x, torch.sin(x.sum(1)) - 10, "mse", 1
    if kind == "binary":
        return x, (x[:, 0] * x[:, 1] > 0).long(), "bce", 1
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), "cross_entropy", 3


# clips from inactive to saturating (0.002: nearly every per-sample gradient entry is clamped)
CASES = [
    ("regression", 1, None),
    ("binary", 2, 0.5),
    ("multiclass", 1, 0.2),
    ("regression", 2, 0.3),
    ("binary", 1, 0.002),
    ("offset", 1, 0.5),
]


@pytest.mark.parametrize("kind,layers,clip", CASES)
def test_removal_replay_random_and_attacked(kind, layers, clip):
    x, y, loss, out = _data(kind)
    model = hidden_mlp(3, out, 5, layers, seed=layers)
    k = 2
    cfg = T.TrainConfig(epochs=2, lr=0.2, batch_size=10, loss=loss, clip=clip, momentum=0.5 if layers == 2 else 0.0)
    data = T.removal(x, y, k, regression=kind in ("regression", "offset"))
    bounds = T.certified_training(model, data, cfg)
    assert bounds.mean_width() > 0
    gen = torch.Generator().manual_seed(3)

    def random_removal(epoch, idx, params):
        grads = _sample_grads(model, params, x[idx], y[idx], loss, clip)
        r = int(torch.randint(0, k + 1, (1,), generator=gen))
        keep = torch.randperm(len(idx), generator=gen)[r:]
        return [grads[i] for i in keep]

    def attack(which, sign):  # remove the k samples pushing one coordinate hardest the other way
        def choose(epoch, idx, params):
            grads = _sample_grads(model, params, x[idx], y[idx], loss, clip)
            j, flat = which
            v = torch.stack([g[j].reshape(-1)[flat] for g in grads])
            drop = set(v.argsort(descending=sign > 0)[:k].tolist())
            return [g for i, g in enumerate(grads) if i not in drop]

        return choose

    for _ in range(6):
        assert bounds.contains(_replay(model, x, y, cfg, random_removal), atol=1e-9)
    for j, name in enumerate(bounds.lower):
        for sign in (1, -1):
            assert bounds.contains(_replay(model, x, y, cfg, attack((j, 0), sign)), atol=1e-9), name


def test_one_removal_step_is_tight():
    """From exact parameters one step's removal bound is attained: removing the k samples with
    the largest gradient in a coordinate gives exactly that coordinate's upper bound."""
    x, y, loss, out = _data("regression", n=10)
    model = hidden_mlp(3, out, 4, 1, seed=0)
    cfg = T.TrainConfig(epochs=1, lr=0.1, batch_size=10, loss=loss)
    bounds = T.certified_training(model, T.removal(x, y, 3, regression=True), cfg)
    params = {n: p.detach().clone().to(D).requires_grad_(True) for n, p in model.named_parameters()}
    grads = _sample_grads(model, params, x, y, loss, None)
    for j, (name, p) in enumerate(params.items()):
        v = torch.stack([g[j].reshape(-1)[0] for g in grads])
        keep_low = v.argsort()[:7]  # drop the three largest gradients: the smallest mean, the highest parameter
        top = p.detach().reshape(-1)[0] - cfg.lr * v[keep_low].mean()
        assert float(top) == pytest.approx(float(bounds.upper[name].reshape(-1)[0]), abs=1e-12), name


@pytest.mark.parametrize("kind,layers,clip", [(c[0], c[1], c[2] or 0.4) for c in CASES])
def test_substitution_replay_with_clipping(kind, layers, clip):
    x, y, loss, out = _data(kind)
    model = hidden_mlp(3, out, 5, layers, seed=layers + 5)
    k = 2
    cfg = T.TrainConfig(epochs=2, lr=0.2, batch_size=10, loss=loss, clip=clip)
    bounds = T.certified_training(model, T.substitution(x, y, k, regression=kind in ("regression", "offset")), cfg)
    gen = torch.Generator().manual_seed(4)

    def substitute(epoch, idx, params):
        xs, ys = x[idx].clone(), y[idx].clone()
        swap = torch.randperm(len(idx), generator=gen)[: int(torch.randint(0, k + 1, (1,), generator=gen))]
        xs[swap] = 20 * torch.randn(len(swap), 3, generator=gen, dtype=D)  # far outside the data
        if kind in ("regression", "offset"):
            ys[swap] = 50 * torch.randn(len(swap), generator=gen, dtype=D)
        else:
            ys[swap] = torch.randint(0, 2 if kind == "binary" else 3, (len(swap),), generator=gen)
        return _sample_grads(model, params, xs, ys, loss, clip)

    for _ in range(8):
        assert bounds.contains(_replay(model, x, y, cfg, substitute), atol=1e-9)
    # clipping bounds each replaced sample, so the box is finite and narrows with k
    narrower = T.certified_training(model, T.substitution(x, y, 1, regression=kind in ("regression", "offset")), cfg)
    assert narrower.mean_width() < bounds.mean_width() < float("inf")


@pytest.mark.parametrize(
    "kind,clip", [("binary", 0.05), ("regression", 0.2), ("multiclass", 0.1), ("regression", 0.002), ("offset", 0.5)]
)
def test_clipping_with_poisoning_and_all_samples_moving(kind, clip):
    x, y, loss, out = _data(kind)
    model = hidden_mlp(3, out, 6, 1, seed=2)
    cfg = T.TrainConfig(epochs=2, lr=0.3, batch_size=10, loss=loss, clip=clip)
    reg = kind in ("regression", "offset")
    gen = torch.Generator().manual_seed(5)
    for data in (T.poison(x, y, k=2, eps=0.1, regression=reg), T.linf(x, y, 0.05, regression=reg)):
        bounds = T.certified_training(model, data, cfg)

        def moved(epoch, idx, params, data=data):
            lo, hi = data.lower[idx], data.upper[idx]
            corner = torch.where(torch.rand(lo.shape, generator=gen, dtype=D) < 0.5, lo, hi)
            xs = x[idx].clone()
            chosen = torch.randperm(len(idx), generator=gen)[: data.k] if data.k is not None else slice(None)
            xs[chosen] = corner[chosen]
            return _sample_grads(model, params, xs, y[idx], loss, clip)

        for _ in range(6):
            assert bounds.contains(_replay(model, x, y, cfg, moved), atol=1e-9)
        # the nominal run is ordinary clipped training (it matters: the clip is active)
        nominal = _replay(model, x, y, cfg, lambda e, idx, p: _sample_grads(model, p, x[idx], y[idx], loss, clip))
        unclipped = _replay(model, x, y, cfg, lambda e, idx, p: _sample_grads(model, p, x[idx], y[idx], loss, None))
        for n in nominal:
            torch.testing.assert_close(bounds.nominal[n], nominal[n], rtol=0, atol=1e-12)
        assert any(not torch.allclose(nominal[n], unclipped[n]) for n in nominal)


def test_budget_errors_name_the_problem():
    x, y, loss, _ = _data("binary")
    model = hidden_mlp(3, 1, 4, 1, seed=0)
    with pytest.raises(ValueError, match="clip"):
        T.certified_training(model, T.substitution(x, y, 1), T.TrainConfig(epochs=1, lr=0.1, batch_size=10))
    with pytest.raises(ValueError, match="below the batch size"):
        T.certified_training(model, T.removal(x, y, 10), T.TrainConfig(epochs=1, lr=0.1, batch_size=10))
    with pytest.raises(ValueError, match="clip must be > 0"):
        T.TrainConfig(epochs=1, lr=0.1, batch_size=10, clip=0.0)
    with pytest.raises(ValueError, match="does not model gradient clipping"):
        T.TrainConfig(epochs=1, lr=0.1, batch_size=10, loss="hinge", step="lp", clip=1.0)
    with pytest.raises(ValueError, match="exact features"):
        T.BoundedDataset(x, x - 0.1, x + 0.1, y, k=1, budget="remove")
    with pytest.raises(ValueError, match="needs a per-batch count"):
        T.BoundedDataset(x, x.clone(), x.clone(), y, budget="substitute")
    with pytest.raises(ValueError, match="budget must be one of"):
        T.BoundedDataset(x, x.clone(), x.clone(), y, k=1, budget="erase")


def test_one_step_with_saturated_clipping():
    """Targets 10 below every output: each sample's output-bias gradient (about 20) is clamped to
    the clip, so one step moves the bias by exactly ``lr * clip`` whatever is removed, and the
    boxes of every budget must hold that point (removal: be that point)."""
    x, y, loss, out = _data("offset", n=10)
    model = hidden_mlp(3, out, 4, 2, seed=0)
    clip, lr = 0.5, 0.1
    cfg = T.TrainConfig(epochs=1, lr=lr, batch_size=10, loss=loss, clip=clip)
    bias = "2.bias"
    moved = float(dict(model.named_parameters())[bias].detach()) - lr * clip
    for data in (
        T.removal(x, y, 3, regression=True),
        T.substitution(x, y, 2, regression=True),
        T.poison(x, y, k=2, eps=0.01, regression=True),
        T.linf(x, y, 0.01, regression=True),
    ):
        b = T.certified_training(model, data, cfg)
        lo, hi = float(b.lower[bias]), float(b.upper[bias])
        assert lo - 1e-12 <= moved <= hi + 1e-12, data.threat
        if data.budget == "remove":
            assert hi - lo < 1e-12


def test_prediction_range_holds_every_replayed_prediction():
    """Privacy-style bounds: the range of each test prediction over a substitution box holds the
    predictions of models trained with replaced samples; a stable prediction keeps its class."""
    x, y, loss, out = _data("multiclass")
    model = hidden_mlp(3, out, 6, 2, seed=7)
    cfg = T.TrainConfig(epochs=1, lr=0.2, batch_size=20, loss=loss, clip=0.05)
    bounds = T.certified_training(model, T.substitution(x, y, 1), cfg)
    x_test = torch.randn(50, 3, generator=torch.Generator().manual_seed(9), dtype=D)
    rng = T.prediction_range(model, bounds, x_test)
    assert rng.stable.any() and (rng.movement > 0).all()
    gen = torch.Generator().manual_seed(8)

    def substitute(epoch, idx, params):
        xs, ys = x[idx].clone(), y[idx].clone()
        i = int(torch.randint(0, len(idx), (1,), generator=gen))
        xs[i], ys[i] = 30 * torch.randn(3, generator=gen, dtype=D), int(torch.randint(0, 3, (1,), generator=gen))
        return _sample_grads(model, params, xs, ys, loss, cfg.clip)

    for _ in range(6):
        params = _replay(model, x, y, cfg, substitute)
        with torch.no_grad():
            pred = functional_call(model.to(D), params, (x_test,))
        assert ((pred >= rng.lower - 1e-9) & (pred <= rng.upper + 1e-9)).all()
        assert ((pred - rng.nominal).abs().amax(1) <= rng.movement + 1e-9).all()
        assert (pred.argmax(1)[rng.stable] == rng.nominal.argmax(1)[rng.stable]).all()


class _Features(torch.nn.Module):
    """A small frozen CNN: convolution, batch norm (running statistics), ReLU, pooling."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.bn.running_mean.uniform_(-0.2, 0.2)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = x.reshape(-1, 1, 6, 6)
        return torch.flatten(torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2), 1)


@pytest.mark.parametrize("method,seed", [("ibp", 0), ("crown", 1)])
def test_fine_tuning_on_frozen_features_replays(method, seed):
    """Poisoned images through a frozen CNN, then ordinary training of a linear head on its
    features: every run ends inside the box trained on the feature-level bounded dataset."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(30, 36, generator=g, dtype=D)
    y = (x[:, :18].sum(1) > x[:, 18:].sum(1)).long()
    extractor = _Features(seed)
    data = T.poison(x, y, k=2, eps=0.05, clamp=(0.0, 1.0))
    feats = T.frozen_features(extractor, data, method=method, batch=7)
    assert feats.x.shape == (30, 27) and feats.k == 2 and (feats.upper - feats.lower).amax() > 0
    head = torch.nn.Linear(27, 1).to(D)
    cfg = T.TrainConfig(epochs=2, lr=0.5, batch_size=10, loss="bce")
    bounds = T.certified_training(head, feats, cfg)
    f = extractor.to(D).eval()
    for trial in range(6):
        xs = x.clone()
        for idx in T.batch_indices(len(x), cfg, 0):
            chosen = idx[torch.randperm(len(idx), generator=g)[:2]]
            pick = torch.rand(len(chosen), 36, generator=g, dtype=D)
            corner = torch.where(pick < 0.5, data.lower[chosen], data.upper[chosen])
            xs[chosen] = corner if trial % 2 else data.lower[chosen] + pick * (data.upper[chosen] - data.lower[chosen])
        with torch.no_grad():
            fx = f(xs)
        params = {n: p.detach().clone().requires_grad_(True) for n, p in head.named_parameters()}
        opt = torch.optim.SGD(list(params.values()), lr=cfg.lr)
        for epoch in range(cfg.epochs):
            for idx in T.batch_indices(len(x), cfg, epoch):
                opt.zero_grad()
                plain_loss(functional_call(head, params, (fx[idx],)), y[idx], "bce").backward()
                opt.step()
        assert bounds.contains({n: p.detach() for n, p in params.items()}, atol=1e-9)
    # exact samples keep exact features; the extractor is left in the mode it was given
    exact = T.frozen_features(extractor.train(), T.label_flip(x, y, 1))
    assert torch.equal(exact.lower, exact.x) and exact.label_sets is not None and extractor.training


def test_agt_side_by_side_script_runs_without_agt(tmp_path):
    """The side-by-side benchmark (BoundFlow's half; AGT is optional) writes its results, table
    and plot, and refuses unknown settings and an existing results file."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "agt_side_by_side.py"
    spec = importlib.util.spec_from_file_location("agt_side_by_side", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "agt"
    assert (
        bench.main(
            ["--settings", "label_flip,regression", "--n-regression", "40000", "--repeats", "1", "--out", str(out)]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["tool"] for r in rows] == ["BoundFlow"] * 4
    assert rows[0]["certified_mse_upper"] >= rows[0]["nominal_mse"] > 0
    assert all(0 <= r["certified_accuracy"] <= r["nominal_accuracy"] for r in rows[1:])
    assert (out / "side_by_side.png").stat().st_size > 0 and "regression n=40,000" in (out / "table.md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--settings", "label_flip", "--out", str(out)])  # results.json exists
    with pytest.raises(SystemExit):
        bench.main(["--settings", "mnist", "--out", str(tmp_path / "x")])
