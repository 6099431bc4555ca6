"""Ordinary torch training written independently of BoundFlow's trainer, and concrete datasets
drawn from a bounded dataset (corners, random points, gradient-sign attacks): what the training
tests replay into the certified boxes."""

from __future__ import annotations

import torch
from torch.func import functional_call

import boundflow.train as T
from boundflow.train.losses import plain_loss

D = torch.float64


def replay(model, x, y, config: T.TrainConfig) -> dict[str, torch.Tensor]:
    """Ordinary torch training with the same order, lr, loss, momentum, weight decay."""
    params = {n: p.detach().clone().to(D).requires_grad_(True) for n, p in model.named_parameters()}
    opt = torch.optim.SGD(
        list(params.values()), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    for epoch in range(config.epochs):
        for idx in T.batch_indices(len(x), config, epoch):
            opt.zero_grad()
            plain_loss(functional_call(model, params, (x[idx],)), y[idx], config.loss).backward()
            opt.step()
    return {n: p.detach() for n, p in params.items()}


def adversarial_dataset(model, x, y, lo, hi, loss, sign: float) -> torch.Tensor:
    xa = x.clone().requires_grad_(True)
    plain_loss(model(xa), y, loss).backward()
    return torch.where(sign * xa.grad >= 0, hi, lo)


def concrete_datasets(model, data: T.BoundedDataset, loss: str, n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lo, hi, x = data.lower, data.upper, data.x
    out = [lo, hi, x]
    out += [adversarial_dataset(model, x, data.y, lo, hi, loss, s) for s in (1.0, -1.0)]
    while len(out) < n:
        if len(out) % 2:
            out.append(torch.where(torch.rand(x.shape, generator=g) < 0.5, lo, hi))  # random corner
        else:
            out.append(lo + (hi - lo) * torch.rand(x.shape, generator=g, dtype=D))
    return out
