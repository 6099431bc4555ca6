"""Max pooling in back-substitution: DeepPoly's relaxation over each window's own entries."""

from __future__ import annotations

import torch
from torch import fx

from boundflow.domains.interval.rules_pooling import pool_index_windows
from boundflow.domains.linear.state import BoundState, _add, _sum_tail

aten = torch.ops.aten

__all__ = ["deeppoly_pool", "maxpool_back"]


def deeppoly_pool(l: torch.Tensor, u: torch.Tensor, args: list):
    """Per window: max of the lower bounds, the argmax index of the lower bounds, max of the
    upper bounds, and whether the argmax-l entry's lower bound beats every other upper bound
    of *its own* window (then the pool equals that entry exactly).  Windows may overlap
    (stride < kernel), be padded or dilated, or use ``ceil_mode``: the other entries are read
    from each window's own index list, never from a plane shared between windows."""
    ml, idx = aten.max_pool2d_with_indices.default(l, *args)
    mu, _ = aten.max_pool2d_with_indices.default(u, *args)
    win = pool_index_windows(l.shape, args, l.device)  # (OH, OW, K) flat input positions, -1 = padding
    k = win.shape[-1]
    win = win.reshape(-1, k)  # (O, K)
    u_win = u.flatten(-2)[..., win.clamp(min=0)]  # (..., O, K)
    chosen = idx.flatten(-2).unsqueeze(-1)  # (..., O, 1)
    others = u_win.masked_fill((win < 0) | (win == chosen), -float("inf"))
    mu_other = others.amax(-1).reshape(ml.shape)
    return ml, idx, mu, ml >= mu_other


def maxpool_back(state: BoundState, node: fx.Node, lA, uA, pending):
    """DeepPoly max pooling: lower ``y >= x[argmax l]``; upper ``y <= x[argmax l]`` where that
    entry's lower bound beats every other upper bound in the window, else ``y <= max u``."""
    inp = node.args[0]
    l, u = state.lower[inp], state.upper[inp]
    ml, idx, mu, exact = deeppoly_pool(l, u, list(node.args[1:]))
    lead = l.shape[:-2]
    hw = l.shape[-2] * l.shape[-1]

    def scatter(a):  # (S, B, C, oh, ow) -> (S, B, C, H, W), coefficient onto the selected entry
        s = a.shape[0]
        out = torch.zeros(s, *lead, hw, dtype=a.dtype, device=a.device)
        index = idx.flatten(-2).unsqueeze(0).expand(s, *idx.flatten(-2).shape)
        out.scatter_add_(-1, index, a.flatten(-2))
        return out.reshape(s, *l.shape)

    lA, uA = lA.expand(lA.shape[0], *ml.shape), uA.expand(uA.shape[0], *ml.shape)
    lA_p, lA_n = lA.clamp(min=0), lA.clamp(max=0)
    uA_p, uA_n = uA.clamp(min=0), uA.clamp(max=0)
    # lower bound: positive coeffs use y >= x_sel; negative use upper (x_sel if exact else const mu)
    l_sel = lA_p + torch.where(exact, lA_n, torch.zeros_like(lA_n))
    l_const = torch.where(exact, torch.zeros_like(lA_n), lA_n) * mu
    u_sel = uA_n + torch.where(exact, uA_p, torch.zeros_like(uA_p))
    u_const = torch.where(exact, torch.zeros_like(uA_p), uA_p) * mu
    _add(pending, inp, scatter(l_sel), scatter(u_sel))
    return _sum_tail(l_const), _sum_tail(u_const)
