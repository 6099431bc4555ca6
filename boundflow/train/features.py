"""Fine-tuning on a frozen feature extractor: the threat model carried through a pretrained
network (a CNN on images, say) to its features, where certified training of the last layers
then runs.

A poisoned input ``x'`` in its box gives features ``f(x')`` in the box that a bound domain
computes for ``f`` over the input box, so every dataset of the threat model maps into the
feature-level bounded dataset, with the same per-batch budget and label sets.  The certificate
of training on it covers the whole pipeline: fixed ``f`` (evaluation mode, its own weights),
then ordinary training of the head on ``f``'s outputs."""

from __future__ import annotations

import copy

import torch
from torch import nn

from boundflow.train.bounded import BoundedDataset

__all__ = ["frozen_features"]


def frozen_features(
    extractor: nn.Module, data: BoundedDataset, method: str = "crown", batch: int = 512, progress: bool = False
) -> BoundedDataset:
    """``data`` seen through the frozen ``extractor``: nominal features ``extractor(x)`` (float64,
    flattened per sample) and per-sample feature bounds from ``method`` (``ibp``, ``crown``,
    ``alpha-crown``: anything :func:`boundflow.compute_bounds` takes) over each sample's input box;
    samples with an exact box get their exact features.  Labels, label sets, ``k``, budget and
    regression targets carry over.  The extractor is copied and put in evaluation mode (batch
    norm on running statistics, no dropout): train the head on ``extractor.eval()``'s outputs."""
    from boundflow.api import compute_bounds

    f = copy.deepcopy(extractor).to(torch.float64).eval()
    for p in f.parameters():
        p.requires_grad_(False)
    n = len(data)
    xs, los, his = [], [], []
    starts = range(0, n, batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="feature bounds", unit="batch")
    for s in starts:
        bt = data.batch(torch.arange(s, min(s + batch, n)))
        x, lo, hi = bt.x, bt.lower, bt.upper
        with torch.no_grad():
            fx = f(x).reshape(len(x), -1)
        flo, fhi = fx.clone(), fx.clone()
        moving = ((hi - lo).reshape(len(x), -1) > 0).any(1)
        if bool(moving.any()):
            b_lo, b_hi = compute_bounds(f, lo[moving], hi[moving], method=method)
            flo[moving] = torch.minimum(b_lo.reshape(int(moving.sum()), -1), fx[moving])
            fhi[moving] = torch.maximum(b_hi.reshape(int(moving.sum()), -1), fx[moving])
        xs.append(fx)
        los.append(flo)
        his.append(fhi)
    return BoundedDataset(
        torch.cat(xs),
        torch.cat(los),
        torch.cat(his),
        data.y,
        label_sets=data.label_sets,
        k=data.k,
        threat=f"{data.threat} through a frozen {type(extractor).__name__} ({method})",
        budget=data.budget,
    )
