"""Tuple-valued splits (``split``, ``split_with_sizes``, ``unbind``) become slices at capture:
the graph has no split left, computes the same values, and CROWN bounds it soundly (random
split sizes, dims and negative dims; no data needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundflow as bf
from boundflow.graph import capture

D = torch.float64
SPLITS = {torch.ops.aten.split_with_sizes.default, torch.ops.aten.split.Tensor, torch.ops.aten.unbind.int}


class Parts(nn.Module):
    def __init__(self, kind: str, dim: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.kind, self.dim = kind, dim
        self.pre = nn.Linear(6, 12)
        self.post = nn.Linear(12, 3)

    def forward(self, x):
        h = self.pre(x).reshape(-1, 3, 4)
        if self.kind == "sizes":
            parts = torch.split(h, [1, 2] if self.dim == 1 else [3, 1], dim=self.dim)
        elif self.kind == "size":
            parts = torch.split(h, 2, dim=self.dim)
        else:
            parts = torch.unbind(h, dim=self.dim)
        parts = [torch.relu(p) * (k + 1) for k, p in enumerate(parts)]
        joined = torch.stack(parts, dim=self.dim) if self.kind == "unbind" else torch.cat(parts, dim=self.dim)
        return self.post(joined.reshape(-1, 12))


@pytest.mark.parametrize("kind", ["sizes", "size", "unbind"])
@pytest.mark.parametrize("dim", [1, 2, -1])
def test_splits_become_slices_with_the_same_values_and_sound_bounds(kind, dim):
    model = Parts(kind, dim, seed=abs(dim) * 3 + len(kind)).to(D).eval()
    x = torch.randn(1, 6, dtype=D)
    g = capture(model, x)
    assert not any(n.op == "call_function" and n.target in SPLITS for n in g.gm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(g.gm(x, *g.params), model(x))
    lo, hi = x - 0.4, x + 0.4
    lb, ub = bf.compute_bounds(model, lo, hi, method="crown")
    pts = lo + (hi - lo) * torch.rand(2000, 6, dtype=D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(pts)
    assert bool((y >= lb - 1e-9).all() and (y <= ub + 1e-9).all())
