"""Max pooling in back-substitution: DeepPoly's relaxation over each window's own entries, with
the lower line optimisable by alpha-CROWN (any convex combination of the window's entries)."""

from __future__ import annotations

import torch
from torch import fx

from boundflow.domains.interval.rules_pooling import pool_index_windows
from boundflow.domains.linear.state import BoundState, _add, _sum_tail

aten = torch.ops.aten

__all__ = ["deeppoly_pool", "maxpool_back", "maxpool_alpha_init"]


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


def maxpool_alpha_init(l: torch.Tensor, args: list) -> torch.Tensor:
    """alpha-CROWN's starting weights ``(*l.shape[:-2], OH*OW, K)``: one-hot on each window's
    argmax-l entry (DeepPoly's lower line)."""
    _, idx = aten.max_pool2d_with_indices.default(l, *args)
    win = pool_index_windows(l.shape, args, l.device)
    win = win.reshape(-1, win.shape[-1])  # (O, K)
    return (win == idx.flatten(-2).unsqueeze(-1)).to(l.dtype)


def maxpool_back(state: BoundState, node: fx.Node, lA, uA, pending, alpha: torch.Tensor | None = None):
    """DeepPoly max pooling: lower ``y >= x[argmax l]``; upper ``y <= x[argmax l]`` where that
    entry's lower bound beats every other upper bound in the window, else ``y <= max u``.

    ``alpha`` (alpha-CROWN, :func:`maxpool_alpha_init`'s shape): the lower line becomes
    ``y >= sum_j w_j x_j`` with ``w = max(alpha, 0)`` normalised over the window's own entries
    (padding excluded), sound for every value since the max is at least any average of its
    entries; where the weights sum to zero the argmax-l entry is used."""
    inp = node.args[0]
    l, u = state.lower[inp], state.upper[inp]
    args = list(node.args[1:])
    ml, idx, mu, exact = deeppoly_pool(l, u, args)
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
    if alpha is not None:
        return _weighted_back(inp, l, args, lA_p, lA_n, uA_p, uA_n, idx, mu, exact, alpha, pending, scatter)
    # lower bound: positive coeffs use y >= x_sel; negative use upper (x_sel if exact else const mu)
    l_sel = lA_p + torch.where(exact, lA_n, torch.zeros_like(lA_n))
    l_const = torch.where(exact, torch.zeros_like(lA_n), lA_n) * mu
    u_sel = uA_n + torch.where(exact, uA_p, torch.zeros_like(uA_p))
    u_const = torch.where(exact, torch.zeros_like(uA_p), uA_p) * mu
    _add(pending, inp, scatter(l_sel), scatter(u_sel))
    return _sum_tail(l_const), _sum_tail(u_const)


def _weighted_back(inp, l, args, lA_p, lA_n, uA_p, uA_n, idx, mu, exact, alpha, pending, scatter):
    """:func:`maxpool_back` with the lower line ``y >= sum_j w_j x_j`` (weights from ``alpha``)."""
    win = pool_index_windows(l.shape, args, l.device)
    win = win.reshape(-1, win.shape[-1])  # (O, K)
    valid = win >= 0
    w = alpha.clamp(min=0) * valid
    total = w.sum(-1, keepdim=True)
    onehot = (win == idx.flatten(-2).unsqueeze(-1)).to(w.dtype)
    w = torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), onehot)
    lead, hw = l.shape[:-2], l.shape[-2] * l.shape[-1]
    target = win.clamp(min=0)

    def spread(a):  # (S, B, C, oh, ow) coefficients on the lower line -> (S, B, C, H, W)
        s = a.shape[0]
        contrib = a.flatten(-2).unsqueeze(-1) * w  # (S, B, C, O, K)
        out = torch.zeros(s, *lead, hw, dtype=a.dtype, device=a.device)
        index = target.expand(*contrib.shape).flatten(-2)
        out.scatter_add_(-1, index, contrib.flatten(-2))
        return out.reshape(s, *l.shape)

    zero_l, zero_u = torch.zeros_like(lA_n), torch.zeros_like(uA_p)
    # the upper line is DeepPoly's: x_sel where exact (then the lower line is x_sel too), else mu
    l_lower_line = torch.where(exact, zero_l, lA_p)
    l_sel = torch.where(exact, lA_p + lA_n, zero_l)
    l_const = torch.where(exact, zero_l, lA_n) * mu
    u_lower_line = torch.where(exact, zero_u, uA_n)
    u_sel = torch.where(exact, uA_n + uA_p, zero_u)
    u_const = torch.where(exact, zero_u, uA_p) * mu
    _add(pending, inp, spread(l_lower_line) + scatter(l_sel), spread(u_lower_line) + scatter(u_sel))
    return _sum_tail(l_const), _sum_tail(u_const)
