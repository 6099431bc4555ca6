"""Certified training: zero-width equivalence with torch.optim.SGD, replay of concrete
training runs inside the certified box, certified predictions, threat models, persistence."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

import boundflow.train as T
from boundflow.models import hidden_mlp as mlp
from tests.support.replay import concrete_datasets, replay

D = torch.float64


def _mlp(d_in: int, out: int, hidden: int = 8, layers: int = 2, seed: int = 0) -> nn.Module:
    return mlp(d_in, out, hidden, layers, seed)


class _CNN(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(3 * 4 * 4, classes)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        return self.head(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@pytest.mark.parametrize(
    "momentum,weight_decay,loss", [(0.0, 0.0, "bce"), (0.9, 0.01, "bce"), (0.5, 0.0, "hinge"), (0.0, 0.05, "mse")]
)
def test_zero_width_reproduces_torch_sgd(momentum, weight_decay, loss):
    d = T.load_dataset("moons", n_samples=200)
    model = _mlp(2, 1)
    cfg = T.TrainConfig(epochs=3, lr=0.3, batch_size=25, loss=loss, momentum=momentum, weight_decay=weight_decay)
    bounds = T.certified_training(model, T.linf(d.x_train, d.y_train, 0.0), cfg)
    ref = replay(model.to(D), d.x_train, d.y_train, cfg)
    for n in ref:
        torch.testing.assert_close(bounds.lower[n], ref[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(bounds.upper[n], ref[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(bounds.nominal[n], ref[n], atol=1e-9, rtol=0)


def test_zero_width_cross_entropy_and_shuffle():
    d = T.load_dataset("iris")
    model = _mlp(4, 3)
    cfg = T.TrainConfig(epochs=2, lr=0.1, batch_size=16, loss="cross_entropy", momentum=0.9, shuffle=True, seed=3)
    bounds = T.certified_training(model, T.linf(d.x_train, d.y_train, 0.0), cfg)
    ref = replay(model, d.x_train, d.y_train, cfg)
    for n in ref:
        torch.testing.assert_close(bounds.lower[n], ref[n], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "name,loss,model_fn,eps",
    [
        ("moons-mlp-bce", "bce", lambda: _mlp(2, 1, hidden=10), 0.01),
        ("moons-mlp3-bce-momentum", "bce", lambda: _mlp(2, 1, hidden=10, layers=3), 0.005),
        ("digits-cnn-ce", "cross_entropy", lambda: _CNN(2).to(D), 0.005),
        ("digits-cnn-bce", "bce", lambda: _CNN(1).to(D), 0.005),
        ("iris-mlp-ce", "cross_entropy", lambda: _mlp(4, 3), 0.01),
    ],
)
def test_replay_ends_inside_the_certified_box(name, loss, model_fn, eps):
    dataset = {"moons": "moons", "digits": "digits-1v7", "iris": "iris"}[name.split("-")[0]]
    d = T.load_dataset(dataset, n_samples=200)
    x, y = d.x_train[:96], d.y_train[:96]
    model = model_fn()
    momentum = 0.5 if "momentum" in name else 0.0
    cfg = T.TrainConfig(epochs=2, lr=0.2, batch_size=16, loss=loss, momentum=momentum, weight_decay=0.001)
    data = T.linf(x, y, eps)
    bounds = T.certified_training(model, data, cfg)
    assert bounds.diverged_at is None
    for xs in concrete_datasets(model, data, loss):
        final = replay(model, xs, y, cfg)
        assert bounds.contains(final, atol=1e-9), name


def test_poison_replay_respects_budget():
    d = T.load_dataset("moons", n_samples=120)
    x, y = d.x_train[:40], d.y_train[:40]
    model = _mlp(2, 1, hidden=6)
    cfg = T.TrainConfig(epochs=2, lr=0.3, batch_size=10, loss="bce")
    data = T.poison(x, y, k=2, eps=0.05)
    bounds = T.certified_training(model, data, cfg)
    g = torch.Generator().manual_seed(1)
    for trial in range(20):
        xs = x.clone()
        for idx in T.batch_indices(len(x), cfg, 0):  # batches are the same every epoch (no shuffle)
            chosen = idx[torch.randperm(len(idx), generator=g)[:2]]
            corner = torch.where(torch.rand(len(chosen), 2, generator=g) < 0.5, data.lower[chosen], data.upper[chosen])
            xs[chosen] = corner if trial % 2 else data.lower[chosen] + (data.upper[chosen] - data.lower[chosen]) * 0.3
        assert bounds.contains(replay(model, xs, y, cfg), atol=1e-9)
    # the budget matters: the box for k=2 is narrower than for every point moving
    all_moving = T.certified_training(model, T.linf(x, y, 0.05), cfg)
    assert bounds.mean_width() < all_moving.mean_width()


def test_label_flip_replay_respects_budget():
    d = T.load_dataset("moons", n_samples=120)
    x, y = d.x_train[:40], d.y_train[:40]
    model = _mlp(2, 1, hidden=6)
    cfg = T.TrainConfig(epochs=2, lr=0.3, batch_size=10, loss="bce")
    bounds = T.certified_training(model, T.label_flip(x, y, k=1), cfg)
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        ys = y.clone()
        for idx in T.batch_indices(len(x), cfg, 0):
            i = idx[torch.randint(len(idx), (1,), generator=g)]
            ys[i] = 1 - ys[i]
        assert bounds.contains(replay(model, x, ys, cfg), atol=1e-9)


def test_certified_predictions_hold_under_sampling():
    d = T.load_dataset("moons", n_samples=400)
    model = _mlp(2, 1, hidden=16)
    cfg = T.TrainConfig(epochs=1, lr=0.5, batch_size=50, loss="bce", pretrain_epochs=10)
    bounds = T.certified_training(model, T.linf(d.x_train, d.y_train, 0.001), cfg)
    cert = T.certify(model, bounds, d.x_test, d.y_test, eps=0.01)
    assert cert.certified > 0.2, "expected some certified points for this easy setting"
    crown = T.certify(model, bounds, d.x_test, d.y_test, eps=0.01, method="crown")
    assert crown.certified >= cert.certified  # the linear domain with bounded weights is tighter here
    assert ((cert.classes < 0) | (crown.classes == cert.classes)).all()
    g = torch.Generator().manual_seed(0)
    idx = torch.nonzero(crown.classes >= 0).reshape(-1)
    cert = crown
    for _ in range(50):
        params = {
            n: bounds.lower[n]
            + (bounds.upper[n] - bounds.lower[n]) * torch.rand(bounds.lower[n].shape, generator=g, dtype=D)
            for n in bounds.lower
        }
        xs = d.x_test[idx] + (torch.rand(len(idx), 2, generator=g, dtype=D) * 2 - 1) * 0.01
        out = functional_call(model, params, (xs,)).reshape(-1)
        assert torch.equal((out > 0).long(), cert.classes[idx])


def test_threat_model_constructors_and_errors():
    x = torch.zeros(4, 3, dtype=D)
    y = torch.tensor([0, 1, 1, 0])
    sub = T.linf_subset(x, y, 0.1, [1])
    assert (sub.upper[1] - sub.lower[1]).max() == pytest.approx(0.2) and (sub.upper[0] == sub.lower[0]).all()
    m = T.missing(x, y, [2], [(-1.0, 1.0)])
    assert m.lower[:, 2].eq(-1).all() and m.upper[:, 2].eq(1).all() and m.lower[:, :2].eq(0).all()
    c = T.linf(x + 0.05, y, 0.1, clamp=(0.0, 1.0))
    assert c.lower.min() == 0.0
    lf = T.label_flip(x, y, 1)
    assert lf.label_sets.all() and lf.k == 1
    with pytest.raises(ValueError, match="eps must be >= 0"):
        T.linf(x, y, -1.0)
    with pytest.raises(IndexError, match="indices must be in"):
        T.linf_subset(x, y, 0.1, [7])
    with pytest.raises(ValueError, match="unknown loss"):
        T.TrainConfig(epochs=1, lr=0.1, batch_size=2, loss="nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        T.load_dataset("nope")


def test_divergence_stops_with_last_finite_bounds():
    d = T.load_dataset("moons", n_samples=200)
    model = _mlp(2, 1, hidden=20)
    cfg = T.TrainConfig(epochs=300, lr=5.0, batch_size=25, loss="bce")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        bounds = T.certified_training(model, T.linf(d.x_train, d.y_train, 0.3), cfg)
    assert bounds.diverged_at is not None
    assert any(issubclass(x.category, T.TrainingDiverged) for x in w)
    assert all(torch.isfinite(t).all() for t in bounds.lower.values())
    assert bounds.epochs_done == bounds.diverged_at


def test_save_load_and_resume(tmp_path):
    d = T.load_dataset("moons", n_samples=200)
    model = _mlp(2, 1)
    cfg = T.TrainConfig(epochs=4, lr=0.3, batch_size=25, loss="bce", momentum=0.9)
    data = T.linf(d.x_train, d.y_train, 0.001)
    full = T.certified_training(model, data, cfg)
    half = T.certified_training(model, data, T.TrainConfig(**{**cfg.__dict__, "epochs": 2}))
    T.save_bounds(tmp_path / "b.pt", half, cfg)
    loaded, cfg2, _ = T.load_bounds(tmp_path / "b.pt")
    assert cfg2 == cfg and loaded.epochs_done == 2
    resumed = T.certified_training(model, data, cfg, start=loaded)
    for n in full.lower:
        torch.testing.assert_close(resumed.lower[n], full.lower[n])
        torch.testing.assert_close(resumed.upper[n], full.upper[n])
        torch.testing.assert_close(resumed.nominal[n], full.nominal[n])
    assert not list(tmp_path.glob("*.tmp"))


def test_label_flip_multiclass_cross_entropy_replay():
    d = T.load_dataset("iris")
    x, y = d.x_train[:48], d.y_train[:48]
    model = _mlp(4, 3, hidden=6)
    cfg = T.TrainConfig(epochs=1, lr=0.1, batch_size=12, loss="cross_entropy")
    bounds = T.certified_training(model, T.label_flip(x, y, k=1, n_classes=3), cfg)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        ys = y.clone()
        for idx in T.batch_indices(len(x), cfg, 0):
            i = idx[torch.randint(len(idx), (1,), generator=g)]
            ys[i] = (ys[i] + torch.randint(1, 3, (1,), generator=g)) % 3
        assert bounds.contains(replay(model, x, ys, cfg), atol=1e-9)


@pytest.mark.parametrize("loss", ["mse", "hinge"])
def test_missing_features_and_subset_replay(loss):
    d = T.load_dataset("breast-cancer")
    x, y = d.x_train[:64, :6], d.y_train[:64]
    model = _mlp(6, 1, hidden=6)
    cfg = T.TrainConfig(epochs=2, lr=0.05, batch_size=16, loss=loss)
    for data in (T.missing(x, y, [0, 3], [(-0.5, 0.5), (0.0, 0.2)]), T.linf_subset(x, y, 0.05, [0, 5, 17, 40])):
        bounds = T.certified_training(model, data, cfg)
        for xs in concrete_datasets(model, data, loss, n=20, seed=4):
            assert bounds.contains(replay(model, xs, y, cfg), atol=1e-9)


class _Shared(nn.Module):
    """One Linear layer called twice: per-sample gradients are not outer products."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(torch.relu(self.a(torch.relu(self.a(x)))))


@pytest.mark.parametrize("case", range(6))
def test_batched_per_sample_gradients_match_the_loop(case):
    """The k-of-n step's batched per-sample gradients (outer products after one backward pass;
    a convolution's summed over its output positions) are the one-sample-at-a-time bounds, over
    random architectures, losses and threats; a layer called twice takes the loop."""
    from boundflow.domains.interval import IntervalTensor
    from boundflow.train import trainer
    from boundflow.train.losses import Target

    g = torch.Generator().manual_seed(case)
    loss = ["bce", "cross_entropy", "mse", "hinge", "cross_entropy", "cross_entropy"][case]
    n_out = 1 if loss in ("bce", "hinge") else 3
    d_in = int(torch.randint(2, 6, (1,), generator=g))
    if case == 4:
        model, d_in, n_out = _Shared().to(D), 3, 2
    elif case == 5:
        model, d_in = _CNN(3).to(D), 64
    else:
        model = _mlp(d_in, n_out, hidden=int(torch.randint(2, 9, (1,), generator=g)), layers=case % 3 + 2, seed=case)
    w = float(torch.rand((), generator=g)) * 0.05
    params = {
        n: IntervalTensor(p.detach() - w, p.detach() + w, requires_grad=True) for n, p in model.named_parameters()
    }
    x = torch.randn(7, d_in, generator=g, dtype=D)
    y = torch.randint(0, max(n_out, 2), (7,), generator=g)
    sets = torch.rand(7, max(n_out, 2), generator=g) < 0.5 if loss == "cross_entropy" else None
    if sets is not None:
        sets[torch.arange(7), y] = True
    xi = IntervalTensor(x - 0.1, x + 0.1)
    tgt = Target(y, sets, max(n_out, 2))
    fast = trainer._per_sample_grads(model, params, xi, tgt, loss, 7)
    slow = trainer._per_sample_grads_loop(model, params, xi, tgt, loss, 7)
    assert set(fast) == set(slow) == set(params)
    for n in params:
        assert fast[n][0].shape == (7, *params[n].shape)
        assert torch.allclose(fast[n][0], slow[n][0], rtol=1e-12, atol=1e-15), n
        assert torch.allclose(fast[n][1], slow[n][1], rtol=1e-12, atol=1e-15), n
    if case == 5:
        assert trainer._batched_layers(model, params) is not None  # a convolution: batched too


class _RandomConvNet(nn.Module):
    """Two convolutions with random kernel, stride, padding, dilation and bias, a ReLU between,
    and a linear head."""

    def __init__(self, g: torch.Generator, classes: int) -> None:
        super().__init__()

        def pick(*options):
            return options[int(torch.randint(0, len(options), (1,), generator=g))]

        c1, c2 = pick(1, 2), pick(2, 3)
        self.a = nn.Conv2d(c1, c2, pick(1, 2, 3), stride=pick(1, 2), padding=pick(0, 1, 2), dilation=pick(1, 2),
                           bias=pick(True, False))  # fmt: skip
        self.b = nn.Conv2d(
            c2, 2, pick(2, 3), stride=pick(1, 2), padding=(pick(0, 1), pick(0, 2)), bias=pick(True, False)
        )
        self.c1 = c1
        with torch.no_grad():
            n = self.b(self.a(torch.zeros(1, c1, 9, 9))).numel()
        self.head = nn.Linear(n, classes)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.b(torch.relu(self.a(x)))), 1))


@pytest.mark.parametrize("case", range(8))
def test_batched_convolution_gradients_match_the_loop_and_contain_concrete_ones(case):
    """Random convolution arguments (kernel, stride, padding, dilation, bias): the batched
    per-sample bounds equal the loop's, and every concrete per-sample gradient (corner and
    random inputs and weights from the boxes) lies inside them."""
    from boundflow.domains.interval import IntervalTensor
    from boundflow.train import trainer
    from boundflow.train.losses import Target, plain_loss

    g = torch.Generator().manual_seed(100 + case)
    loss = ["cross_entropy", "bce", "mse", "hinge"][case % 4]
    n_out = 1 if loss in ("bce", "hinge") else 3
    torch.manual_seed(case)
    model = _RandomConvNet(g, n_out).to(D)
    assert trainer._batched_layers(model, dict(model.named_parameters())) is not None
    w = 0.02 * float(torch.rand((), generator=g))
    params = {
        n: IntervalTensor(p.detach() - w, p.detach() + w, requires_grad=True) for n, p in model.named_parameters()
    }
    b = 5
    x = torch.randn(b, model.c1, 9, 9, generator=g, dtype=D)
    y = torch.randint(0, max(n_out, 2), (b,), generator=g)
    xi = IntervalTensor(x - 0.05, x + 0.05)
    tgt = Target(y, None, max(n_out, 2))
    fast = trainer._per_sample_grads(model, params, xi, tgt, loss, b)
    slow = trainer._per_sample_grads_loop(model, params, xi, tgt, loss, b)
    for n in params:
        assert torch.allclose(fast[n][0], slow[n][0], rtol=1e-10, atol=1e-13), n
        assert torch.allclose(fast[n][1], slow[n][1], rtol=1e-10, atol=1e-13), n

    def per_sample(p, xs):  # ordinary autograd, one sample at a time
        out = {n: [] for n in p}
        for i in range(b):
            q = {n: v.clone().requires_grad_(True) for n, v in p.items()}
            lv = plain_loss(functional_call(model, q, (xs[i : i + 1],)), y[i : i + 1], loss) / b
            for n, gr in zip(q, torch.autograd.grad(lv, list(q.values()), allow_unused=True), strict=True):
                out[n].append(torch.zeros_like(q[n]) if gr is None else gr)
        return {n: torch.stack(v) for n, v in out.items()}

    for t in range(6):
        corner = t % 2 == 0
        p = {
            k: torch.where(torch.rand(v.shape, generator=g) < 0.5, v.lower, v.upper)
            if corner
            else v.lower + (v.upper - v.lower) * torch.rand(v.shape, generator=g, dtype=D)
            for k, v in params.items()
        }
        xs = x + (torch.rand(x.shape, generator=g, dtype=D) * 2 - 1) * 0.05
        per = per_sample(p, xs)
        for n in params:
            assert (per[n] >= fast[n][0] - 1e-12).all() and (per[n] <= fast[n][1] + 1e-12).all(), (n, t)
