"""The networks and points the tightness benchmark bounds: built-in cases on scikit-learn's 8x8
digits (random, naturally trained and IBP-trained; MLPs and a CNN; ReLU, sigmoid, tanh), an ONNX
file, or a Python factory ``module:function``.

Every case is deterministic (fixed seeds, fixed data split), float64 and in eval mode.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from boundflow.models import mlp

__all__ = ["Case", "builtin_cases", "sdp_case", "onnx_case", "factory_case", "ibp_bounds", "DigitsCNN", "mlp"]

D = torch.float64


@dataclass
class Case:
    """One network and the points bounded around.  ``domain``: the valid input range (boxes are
    clipped to it), ``labels``: the classes whose margins are bounded (the model's own
    predictions where no labels are known)."""

    name: str
    model: nn.Module
    points: torch.Tensor
    labels: torch.Tensor
    domain: tuple[float, float] | None = (0.0, 1.0)
    source: str = "python"


class DigitsCNN(nn.Module):
    """conv(1->c, 3x3) - ReLU - maxpool 2 - linear, on 8x8 images given as 64 features."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(x.reshape(-1, 1, 8, 8))))
        return self.fc(torch.flatten(h, 1))


def ibp_bounds(model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable interval bounds (centre/radius form) through a ``Sequential`` of Linear and
    monotone activations, for IBP training.  (BoundFlow's ``IntervalTensor`` computes *interval*
    gradients of interval parameters, not gradients of the bounds w.r.t. exact parameters, so
    IBP training needs this small differentiable pass.)"""
    c, r = (lo + hi) / 2, (hi - lo) / 2
    for m in model:
        if isinstance(m, nn.Linear):
            c, r = F.linear(c, m.weight, m.bias), F.linear(r, m.weight.abs())
        elif isinstance(m, (nn.ReLU, nn.Sigmoid, nn.Tanh)):
            a, b = m(c - r), m(c + r)
            c, r = (a + b) / 2, (b - a) / 2
        else:
            raise TypeError(f"ibp_bounds: no rule for {type(m).__name__}")
    return c - r, c + r


def _train(model: nn.Module, x, y, epochs: int, ibp_eps: float = 0.0, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy; with ``ibp_eps`` the loss mixes in IBP's worst-case logits, with eps
    ramped up over the first half (certified training in the style of Gowal et al.)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        eps = ibp_eps * min(1.0, 2 * (ep + 1) / epochs)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if ibp_eps:
                lo, hi = ibp_bounds(model, (x[idx] - eps).clamp(0, 1), (x[idx] + eps).clamp(0, 1))
                onehot = F.one_hot(y[idx], 10).bool()
                worst = torch.where(onehot, lo, hi)
                loss = 0.5 * loss + 0.5 * F.cross_entropy(worst, y[idx])
            loss.backward()
            opt.step()
    return model.eval()


def _digits():
    from boundflow.train import load_dataset

    d = load_dataset("digits")
    return d.x_train.to(D), d.y_train, d.x_test.to(D), d.y_test


def builtin_cases(quick: bool = False, points: int | None = None) -> list[Case]:
    """The built-in networks on digits.  ``quick``: three small networks (a run under a minute);
    otherwise seven, from random to IBP-trained, MLPs and a CNN, ReLU, sigmoid and tanh."""
    xtr, ytr, xte, yte = _digits()
    n = points or (3 if quick else 16)
    xs, ys = xte[:n], yte[:n]
    ep = 6 if quick else 20
    specs: list[tuple[str, callable]] = [
        ("MLP 64-16-16-10 ReLU, natural", lambda: _train(mlp([64, 16, 16, 10]), xtr, ytr, ep)),
        ("MLP 64-16-10 sigmoid, natural", lambda: _train(mlp([64, 16, 10], nn.Sigmoid), xtr, ytr, ep)),
        ("CNN conv2-maxpool-fc ReLU, natural", lambda: _train(DigitsCNN(2).to(D), xtr, ytr, ep)),
    ]
    if not quick:
        specs = [
            ("MLP 64-32-32-10 ReLU, random", lambda: mlp([64, 32, 32, 10]).eval()),
            ("MLP 64-32-32-10 ReLU, natural", lambda: _train(mlp([64, 32, 32, 10]), xtr, ytr, ep)),
            ("MLP 64-32-32-10 ReLU, IBP-trained", lambda: _train(mlp([64, 32, 32, 10]), xtr, ytr, ep, ibp_eps=0.03)),
            ("MLP 64-32-10 sigmoid, natural", lambda: _train(mlp([64, 32, 10], nn.Sigmoid), xtr, ytr, ep)),
            ("MLP 64-32-10 tanh, natural", lambda: _train(mlp([64, 32, 10], nn.Tanh), xtr, ytr, ep)),
            ("CNN conv4-maxpool-fc ReLU, natural", lambda: _train(DigitsCNN(4).to(D), xtr, ytr, ep)),
        ]
    return [Case(name, make(), xs, ys) for name, make in specs]


def sdp_case(points: int = 3) -> Case:
    """A network small enough for the SDP relaxation (``--factory
    boundflow.bench.networks:sdp_case``): MLP 16-12-12-10 ReLU, naturally trained on the digits
    averaged to 4x4 (16 features), so the SDP lifts at most 16 inputs and 24 ReLUs."""
    xtr, ytr, xte, yte = _digits()

    def small(x):
        return F.avg_pool2d(x.reshape(-1, 1, 8, 8), 2).reshape(-1, 16)

    model = _train(mlp([16, 12, 12, 10]), small(xtr), ytr, 20)
    return Case("MLP 16-12-12-10 ReLU on 4x4 digits, natural", model, small(xte)[:points], yte[:points])


def onnx_case(path: str | Path, points: int = 8, data: str | Path | None = None, seed: int = 0) -> Case:
    """A network from an ONNX file.  Points: array ``x`` (and optionally ``y``) from the ``.npz``
    ``data``, else uniform in ``[0, 1]`` with ``seed``; labels: the model's own predictions unless
    given (margins of the predicted class)."""
    import numpy as np

    from boundflow.onnx import load_onnx

    path = Path(path)
    model = load_onnx(path).to(D).eval()
    shape = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    labels = None
    if data is not None:
        arr = np.load(data)
        if "x" not in arr:
            raise ValueError(f"{data}: needs an array 'x' of inputs (optionally 'y' labels)")
        x = torch.as_tensor(arr["x"], dtype=D)[:points]
        labels = torch.as_tensor(arr["y"])[:points] if "y" in arr else None
        domain = None
    else:
        if shape is None:
            raise ValueError(f"{path}: input shape unknown; pass data=<npz with x>")
        x = torch.rand(points, *shape, generator=torch.Generator().manual_seed(seed), dtype=D)
        domain = (0.0, 1.0)
    with torch.no_grad():
        pred = model(x).reshape(len(x), -1).argmax(1)
    return Case(path.stem, model, x, pred if labels is None else labels, domain, source=f"onnx:{path}")


def factory_case(spec: str) -> Case:
    """``module:function`` returning a :class:`Case`, or ``(model, points[, labels])``."""
    if ":" not in spec:
        raise ValueError(f"factory {spec!r}: expected module:function")
    mod, fn = spec.split(":", 1)
    out = getattr(importlib.import_module(mod), fn)()
    if isinstance(out, Case):
        return out
    model, x, *rest = out
    model = model.to(D).eval()
    x = torch.as_tensor(x, dtype=D)
    with torch.no_grad():
        pred = model(x).reshape(len(x), -1).argmax(1)
    return Case(fn, model, x, rest[0] if rest else pred, None, source=f"python:{spec}")
