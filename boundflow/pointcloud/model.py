"""PointNet without T-nets: a shared per-point MLP (1x1 convolutions), a global max pool and an
MLP head.  Input ``(B, N, 3)``.

``pool`` chooses how the global max pool is *written*, not what it computes:

* ``"max"``: one ``max_pool2d`` over all N points (the linear domain relaxes it with DeepPoly's
  rule: ``y >= x[argmax l]``, ``y <= max u`` unless one point dominates);
* ``"cascade"``: a binary tree of pairwise maxima, each written as ``max(a, b) = b + relu(a - b)``
  — the same function (up to one rounding of ``b + (a - b)``), but the linear domain now bounds
  every ``a - b`` by back-substitution (keeping the correlation between the two points) and
  relaxes each pair with ReLU's triangle, optimisable by alpha-CROWN.  N must be a power of 2.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PointNet"]


class PointNet(nn.Module):
    def __init__(self, n_classes: int, width: tuple[int, ...] = (32, 64), head: int = 32, pool: str = "max"):
        super().__init__()
        layers, c = [], 3
        for w in width:
            layers += [nn.Conv1d(c, w, 1), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, head), nn.ReLU(), nn.Linear(head, n_classes))
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.transpose(1, 2))  # (B, C, N)
        if self.pool == "max":
            g = nn.functional.max_pool2d(h.unsqueeze(-1), (h.shape[2], 1)).flatten(1)
        elif self.pool == "cascade":
            n = h.shape[2]
            if n & (n - 1):
                raise ValueError(f"pool='cascade' needs a power-of-2 number of points, got {n}")
            while h.shape[2] > 1:
                a, b = h[:, :, 0::2], h[:, :, 1::2]
                h = b + torch.relu(a - b)
            g = h.flatten(1)
        else:
            raise ValueError(f"unknown pool {self.pool!r}; choose 'max' or 'cascade'")
        return self.head(g)
