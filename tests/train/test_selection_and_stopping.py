"""Training a user can steer (issue 17): learning-rate decay, the kept box and early stopping,
resume refusal, and errors before any work.  Every new rule is checked by replay: concrete
SGD runs on datasets inside the threat model end inside the box the rule returns."""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import functional_call

import boundflow.train as T
from boundflow.cli import main
from boundflow.models import hidden_mlp as mlp
from boundflow.train.losses import plain_loss
from tests.support.cli_contract import assert_user_error

D = torch.float64


def _replay(model, x, y, config: T.TrainConfig, epochs: int | None = None) -> dict[str, torch.Tensor]:
    """Ordinary torch SGD with the config's batch order and learning-rate schedule."""
    params = {n: p.detach().clone().to(D).requires_grad_(True) for n, p in model.named_parameters()}
    opt = torch.optim.SGD(list(params.values()), lr=config.lr, momentum=config.momentum)
    for epoch in range(config.epochs if epochs is None else epochs):
        for group in opt.param_groups:
            group["lr"] = config.lr * config.lr_decay**epoch
        for idx in T.batch_indices(len(x), config, epoch):
            opt.zero_grad()
            plain_loss(functional_call(model, params, (x[idx],)), y[idx], config.loss).backward()
            opt.step()
    return {n: p.detach() for n, p in params.items()}


def _data(n=240, seed=0):
    d = T.load_dataset("moons", n_samples=n, seed=seed)
    return d.x_train, d.y_train, (d.x_test, d.y_test)


def _corners(data: T.BoundedDataset, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = [data.lower, data.upper]
    while len(out) < n:
        out.append(torch.where(torch.rand(data.x.shape, generator=g) < 0.5, data.lower, data.upper))
    return out


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lr_decay_at_zero_width_is_torch_sgd_with_the_same_schedule(momentum):
    x, y, _ = _data()
    model = mlp(2, 1, 8, 2, 0)
    cfg = T.TrainConfig(epochs=4, lr=0.5, batch_size=30, lr_decay=0.5, momentum=momentum, shuffle=True, seed=2)
    b = T.certified_training(model, T.linf(x, y, 0.0), cfg)
    ref = _replay(model, x, y, cfg)
    for n in ref:
        torch.testing.assert_close(b.lower[n], ref[n], atol=1e-9, rtol=0)
        torch.testing.assert_close(b.nominal[n], ref[n], atol=1e-9, rtol=0)
    # a decay of 1 is a different run: the schedule is really applied
    flat = T.certified_training(model, T.linf(x, y, 0.0), T.TrainConfig(epochs=4, lr=0.5, batch_size=30, seed=2))
    assert any(not torch.allclose(flat.lower[n], ref[n]) for n in ref)


def test_replays_with_decay_end_inside_the_box():
    x, y, _ = _data()
    model = mlp(2, 1, 10, 3, 1)
    data = T.linf(x, y, 0.01)
    cfg = T.TrainConfig(epochs=3, lr=0.3, batch_size=40, lr_decay=0.7, momentum=0.5)
    b = T.certified_training(model, data, cfg)
    for xs in _corners(data, 8):
        assert b.contains(_replay(model, xs, y, cfg), atol=1e-9)


def test_kept_box_is_the_best_validation_epoch_and_contains_its_replays():
    x, y, val = _data(400)
    model = mlp(2, 1, 20, 2, 0)
    data = T.linf(x, y, 0.02)
    cfg = T.TrainConfig(epochs=8, lr=0.2, batch_size=50, keep_best=True)
    b = T.certified_training(model, data, cfg, val=val)
    scores = [h["val_certified_accuracy"] for h in b.history]
    kept = b.kept()
    best = scores.index(max(scores)) + 1  # the earliest best epoch
    assert kept.epochs_done == best == b.best["epoch"] and b.best["score"] == max(scores)
    # the kept box is exactly the box of a run that stops at that epoch
    short = T.certified_training(model, data, T.TrainConfig(epochs=best, lr=0.2, batch_size=50))
    for n in short.lower:
        assert torch.equal(kept.lower[n], short.lower[n]) and torch.equal(kept.upper[n], short.upper[n])
    for xs in _corners(data, 6):
        assert kept.contains(_replay(model, xs, y, cfg, epochs=best), atol=1e-9)
    # without a selection rule the bounds are their own kept box
    plain = T.certified_training(model, data, T.TrainConfig(epochs=2, lr=0.2, batch_size=50))
    assert plain.kept() is plain


def test_stopping_rules_end_training():
    x, y, val = _data(400)
    model = mlp(2, 1, 20, 2, 0)
    data = T.linf(x, y, 0.01)  # at this lr, certified accuracy rises in epoch 1, then falls
    cfg = T.TrainConfig(epochs=30, lr=0.5, batch_size=50, keep_best=True, stop_drop=0.05)
    b = T.certified_training(model, data, cfg, val=val)
    scores = [h["val_certified_accuracy"] for h in b.history]
    assert b.stopped_at == len(scores) < 30
    assert scores[-1] < max(scores) - 0.05 and all(s >= max(scores[: i + 1]) - 0.05 for i, s in enumerate(scores[:-1]))
    cfg = T.TrainConfig(epochs=30, lr=0.5, batch_size=50, patience=2)
    b = T.certified_training(model, data, cfg, val=val)
    scores = [h["val_certified_accuracy"] for h in b.history]
    first_best = scores.index(max(scores))
    assert b.stopped_at == first_best + 3 == len(scores)


def test_selection_needs_validation_data_and_valid_settings():
    x, y, _ = _data()
    with pytest.raises(ValueError, match="val="):
        T.certified_training(mlp(2, 1, 4, 2, 0), T.linf(x, y, 0.0), T.TrainConfig(1, 0.1, 20, keep_best=True))
    for bad in ({"lr_decay": 0.0}, {"lr_decay": 1.5}, {"patience": 0}, {"stop_drop": -0.1}, {"lr": 0.0}):
        with pytest.raises(ValueError):
            T.TrainConfig(1, **{"lr": 0.1, "batch_size": 20, **bad})


def test_float_labels_are_refused_and_integral_ones_accepted():
    x, y, _ = _data()
    with pytest.raises(ValueError, match="0.7 at sample 3"):
        T.linf(x, torch.where(torch.arange(len(y)) == 3, 0.7, y.double()), 0.01)
    assert T.linf(x, y.double(), 0.01).y.dtype == torch.int64


def _cli(out, *extra):
    return [
        "train",
        "--dataset",
        "moons",
        "--n-samples",
        "300",
        "--batch-size",
        "50",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_cli_saves_the_kept_box_with_its_epoch(tmp_path):
    out = tmp_path / "run"
    assert main(_cli(out, "--epochs", "4", "--epsilon", "0.02", "--lr", "0.3")) == 0
    m = json.loads((out / "metrics.json").read_text())
    scores = [h["val_certified_accuracy"] for h in m["history"]]
    assert m["kept"]["epoch"] == scores.index(max(scores)) + 1
    b, _, extra = T.load_bounds(out / "bounds.pt")
    assert b.epochs_done == m["kept"]["epoch"] == extra["kept_epoch"]
    ck, _, _ = T.load_bounds(out / "checkpoint.pt")
    assert ck.epochs_done == 4  # the checkpoint keeps the last epoch (for --resume)


def test_cli_resume_refuses_another_threat_dataset_or_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(out, "--epochs", "1", "--epsilon", "0.01")) == 0
    for extra, what in (
        (["--epsilon", "0.5"], "threat model"),
        (["--epsilon", "0.01", "--seed", "3"], "configuration"),
        (["--epsilon", "0.01", "--n-samples", "320"], "dataset"),
        (["--epsilon", "0.01", "--lr-decay", "0.9"], "configuration"),
    ):
        # (a later --n-samples overrides the first)
        assert_user_error(capsys, _cli(out, "--epochs", "2", "--resume", *extra), what)
    assert main(_cli(out, "--epochs", "2", "--resume", "--epsilon", "0.01")) == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--hidden", "0"], "--hidden must be >= 1"),
        (["--threat", "poison", "--k", "60"], "--k 60 is larger than --batch-size 50"),
        (["--threat", "label-flip", "--epsilon", "0.1"], "--eps has no effect"),
        (["--lr-decay", "2"], "--lr-decay must be in"),
        (["--batch-size", "1000"], "larger than the"),
        (["--val-fraction", "0"], "need validation data"),
    ],
)
def test_cli_errors_before_any_work(tmp_path, capsys, extra, message):
    assert_user_error(capsys, _cli(tmp_path / "run", *extra), message)
    assert not (tmp_path / "run").exists()  # nothing written: refused before any work


def test_datasets_and_dataloaders_are_accepted_and_give_the_same_box():
    from torch.utils.data import DataLoader, TensorDataset

    x, y, _ = _data()
    cfg = T.TrainConfig(epochs=2, lr=0.2, batch_size=30)
    model = mlp(2, 1, 8, 2, 0)
    ref = T.certified_training(model, T.linf(x, y, 0.01), cfg)
    ds = TensorDataset(x, y)
    for source in (ds, DataLoader(ds, batch_size=17)):  # in order: the same tensors
        b = T.certified_training(model, T.linf(source, None, 0.01), cfg)
        for n in ref.lower:
            assert torch.equal(b.lower[n], ref.lower[n]) and torch.equal(b.upper[n], ref.upper[n])
    assert T.poison(ds, None, 2, 0.01).k == 2 and len(T.label_flip(ds, None, 1)) == len(x)
    with pytest.raises(ValueError, match="labels must be integer"):
        T.linf(TensorDataset(x, y.double() + 0.5), None, 0.01)
    with pytest.raises(ValueError, match="Dataset or DataLoader"):
        T.linf(3, None, 0.01)
