"""Streamed training data: features memory-mapped from ``.npy`` files, read batch by batch with
boxes made per batch.  The streamed path must give exactly the in-memory bounds (for every
threat model, shuffled batch orders included), its boxes must hold replayed training runs, bad
files must fail before any training, and ``boundflow train --data FOLDER`` must run on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.func import functional_call

import boundflow.train as T
from boundflow.cli import main as cli_main
from boundflow.models import hidden_mlp
from boundflow.train.losses import plain_loss

D = torch.float64


def _memmap(tmp_path, a: np.ndarray, name: str = "x.npy") -> np.memmap:
    np.save(tmp_path / name, a)
    return np.load(tmp_path / name, mmap_mode="r")


def _data(n=48, d=4, seed=0, dtype=np.float64):
    g = np.random.default_rng(seed)
    x = g.uniform(0, 1, (n, d)).astype(dtype)
    return x, (x[:, 0] + x[:, 1] > 1).astype(np.int64), np.sin(x.sum(1) * 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shuffle", [False, True])
def test_streamed_bounds_equal_in_memory_bounds(tmp_path, dtype, shuffle):
    x, y, t = _data(dtype=dtype)
    xm = _memmap(tmp_path, x)
    xt = torch.from_numpy(x.astype(np.float64))
    cases = [
        (lambda a, b: T.poison(a, b, k=2, eps=0.05, clamp=(0.0, 1.0)), y, "bce", 1, None),
        (lambda a, b: T.linf(a, b, 0.02, regression=True), t, "mse", 1, None),
        (lambda a, b: T.removal(a, b, 2), y, "cross_entropy", 2, 0.5),
        (lambda a, b: T.substitution(a, b, 1, regression=True), t, "mse", 1, 0.3),
        (lambda a, b: T.label_flip(a, b, 1), y, "bce", 1, None),
    ]
    for make, labels, loss, out, clip in cases:
        streamed, memory = make(xm, labels), make(xt, labels)
        assert streamed.streamed and isinstance(streamed.x, np.memmap) and not memory.streamed
        model = hidden_mlp(4, out, 6, 2, seed=1)
        cfg = T.TrainConfig(epochs=2, lr=0.2, batch_size=12, loss=loss, shuffle=shuffle, clip=clip)
        a, b = T.certified_training(model, streamed, cfg), T.certified_training(model, memory, cfg)
        for n in a.lower:
            assert torch.equal(a.lower[n], b.lower[n]) and torch.equal(a.upper[n], b.upper[n]), (streamed.threat, n)
            assert torch.equal(a.nominal[n], b.nominal[n])


def test_streamed_poison_replays_inside_the_box(tmp_path):
    x, y, _ = _data(n=40, seed=3)
    data = T.poison(_memmap(tmp_path, x), y, k=2, eps=0.05)
    model = hidden_mlp(4, 1, 5, 2, seed=2)
    cfg = T.TrainConfig(epochs=2, lr=0.5, batch_size=10, loss="bce", shuffle=True)
    bounds = T.certified_training(model, data, cfg)
    g = torch.Generator().manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for trial in range(10):
        params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        opt = torch.optim.SGD(list(params.values()), lr=cfg.lr)
        for epoch in range(cfg.epochs):
            for idx in T.batch_indices(len(x), cfg, epoch):
                xs = xt[idx].clone()
                pick = torch.randperm(len(idx), generator=g)[:2]
                sign = torch.where(torch.rand(2, 4, generator=g) < 0.5, -1.0, 1.0).to(D)
                xs[pick] += sign * 0.05 * (1.0 if trial % 2 else torch.rand(2, 4, generator=g, dtype=D))
                opt.zero_grad()
                plain_loss(functional_call(model, params, (xs,)), yt[idx], "bce").backward()
                opt.step()
        assert bounds.contains({n: p.detach() for n, p in params.items()}, atol=1e-9)


def test_streamed_data_errors_before_training(tmp_path):
    x, y, _ = _data()
    bad = x.copy()
    bad[17, 2] = np.nan
    with pytest.raises(ValueError, match="sample 17 are not finite"):
        T.poison(_memmap(tmp_path, bad, "bad.npy"), y, k=1, eps=0.1)
    with pytest.raises(ValueError, match=r"sample \d+ has features outside clamp"):
        T.linf(_memmap(tmp_path, x * 2, "big.npy"), y, 0.1, clamp=(0.0, 1.0))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        T.poison(_memmap(tmp_path, x), y, k=1, eps=-0.1)
    with pytest.raises(ValueError, match="float numpy array"):
        T.BoundedDataset(np.zeros((4, 2), dtype=np.int64), None, None, torch.zeros(4, dtype=torch.int64), eps=0.0)
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    with pytest.raises(ValueError, match="missing x_test.npy, y_test.npy"):
        T.load_file(folder)


def test_train_command_streams_a_folder(tmp_path, capsys):
    x, _, t = _data(n=400, seed=5)
    folder = tmp_path / "big"
    folder.mkdir()
    for name, a in (("x", x), ("y", t), ("x_test", x[:50]), ("y_test", t[:50])):
        np.save(folder / f"{name}.npy", a)
    data = T.load_file(folder, regression=True)
    assert isinstance(data.x_train, np.memmap)
    out = tmp_path / "run"
    argv = ["train", "--data", str(folder), "--regression", "--threat", "poison", "--k", "2", "--eps", "0.01"]
    argv += ["--batch-size", "50", "--epochs", "2", "--lr", "0.05", "--hidden", "8", "--out", str(out), "-q"]
    assert cli_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threat"] == "poison(k=2, eps=0.01)"
    hist = metrics["history"]
    assert len(hist) >= 1 and 0 <= hist[-1]["certified_mse_lower"] <= hist[-1]["certified_mse_upper"] < float("inf")
