"""Max pooling in back-substitution: DeepPoly's relaxation over each window's own entries, with
the lower line optimisable by alpha-CROWN (any convex combination of the window's entries)."""

from __future__ import annotations

import torch
from torch import fx

from boundflow.domains.interval.rules_pooling import pool_index_windows
from boundflow.domains.linear.state import BoundState, _add, _sum_tail

aten = torch.ops.aten

__all__ = ["deeppoly_pool", "maxpool_back", "maxpool_alpha_init", "pool_lines"]


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
    return _windows_onehot(l, args, idx)[1]


def _windows_onehot(l: torch.Tensor, args: list, idx: torch.Tensor):
    """``(win, onehot)``: each window's flat input positions ``(O, K)`` (-1 = padding) and the
    one-hot ``(*l.shape[:-2], O, K)`` of its selected entry ``idx``."""
    win = pool_index_windows(l.shape, args, l.device)
    win = win.reshape(-1, win.shape[-1])
    return win, (win == idx.flatten(-2).unsqueeze(-1)).to(l.dtype)


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
    if alpha is not None or state.tight_pool:
        return _window_back(state, inp, l, u, args, (lA_p, lA_n, uA_p, uA_n), idx, mu, exact, alpha, pending)
    # lower bound: positive coeffs use y >= x_sel; negative use upper (x_sel if exact else const mu)
    l_sel = lA_p + torch.where(exact, lA_n, torch.zeros_like(lA_n))
    l_const = torch.where(exact, torch.zeros_like(lA_n), lA_n) * mu
    u_sel = uA_n + torch.where(exact, uA_p, torch.zeros_like(uA_p))
    u_const = torch.where(exact, torch.zeros_like(uA_p), uA_p) * mu
    _add(pending, inp, scatter(l_sel), scatter(u_sel))
    return _sum_tail(l_const), _sum_tail(u_const)


def pool_lines(state: BoundState, node: fx.Node, alpha: torch.Tensor | None = None):
    """Max pooling ``node``'s two lines as weights over each window's entries: ``(win, wl, wu,
    cu)`` with ``win`` each window's flat input positions ``(O, K)`` (-1 = padding), the lower
    line ``y >= sum_k wl_k x_k`` and the upper line ``y <= sum_k wu_k x_k + cu`` (``wl``, ``wu``
    of shape ``(B, C, O, K)``, ``cu`` of ``(B, C, O)``), as :func:`maxpool_back` uses them (with
    ``alpha`` and ``state.tight_pool`` as there)."""
    inp = node.args[0]
    l, u = state.lower[inp], state.upper[inp]
    args = list(node.args[1:])
    _, idx, mu, exact = deeppoly_pool(l, u, args)
    win, onehot = _windows_onehot(l, args, idx)
    return (win, *_line_weights(state, l, u, win, onehot, idx, mu, exact, alpha))


def _line_weights(state, l, u, win, onehot, idx, mu, exact, alpha):
    """``(wl, wu, cu)`` of :func:`pool_lines` (``cu`` flat over the output positions)."""
    valid = win >= 0
    target = win.clamp(min=0)
    pidx = idx.flatten(-2)  # (B, C, O)
    if alpha is None:
        wl = onehot
    else:
        wl = alpha.clamp(min=0) * valid
        total = wl.sum(-1, keepdim=True)
        wl = torch.where(total > 0, wl / torch.where(total > 0, total, torch.ones_like(total)), onehot)
    ex = exact.flatten(-2)  # (B, C, O)
    mu_f = mu.flatten(-2)
    wu = onehot * ex.unsqueeze(-1)
    cu = torch.where(ex, torch.zeros_like(mu_f), mu_f)
    if state.tight_pool:
        lf, uf = l.flatten(-2), u.flatten(-2)
        l_win, u_win = lf[..., target], uf[..., target]  # (B, C, O, K)
        lp, up = lf.gather(-1, pidx).unsqueeze(-1), uf.gather(-1, pidx).unsqueeze(-1)
        dl, du = l_win - up, u_win - lp
        active = valid & (onehot == 0) & (du > 0)
        unstable = active & (dl < 0)
        lam = torch.where(unstable, du / (du - dl).clamp(min=torch.finfo(du.dtype).tiny), torch.ones_like(du))
        lam = torch.where(active, lam, torch.zeros_like(lam))
        c_piv = torch.where(unstable, -lam * dl, torch.zeros_like(dl)).sum(-1)  # (B, C, O)
        w_piv = lam + onehot * (1 - lam.sum(-1, keepdim=True))
        centre = ((l_win + u_win) / 2 * valid).nan_to_num()
        better = (w_piv * centre).sum(-1) + c_piv < torch.where(ex, (onehot * centre).sum(-1), mu_f)
        better = better & torch.isfinite(c_piv) & torch.isfinite(w_piv).all(-1)
        wu = torch.where(better.unsqueeze(-1), w_piv, wu)
        cu = torch.where(better, c_piv, cu)
    return wl, wu, cu


def _window_back(state, inp, l, u, args, parts, idx, mu, exact, alpha, pending):
    """:func:`maxpool_back` with both lines as weights over each window's entries: the lower
    line ``y >= sum_j w_j x_j`` (one-hot at the argmax-l entry, or from ``alpha``), and the
    upper line DeepPoly's (``x_sel`` where exact, else the constant ``max u``) or, with
    ``state.tight_pool``, the pivot-difference line where its value at the centre of the box is
    lower:  ``y = x_p + max_i (x_i - x_p) <= x_p + sum_i lam_i (d_i - dl_i)`` over the entries
    ``i`` whose difference ``d_i = x_i - x_p`` may be positive, with ``d_i`` in
    ``[l_i - u_p, u_i - l_p]`` and ``lam_i`` the triangle slope of ``relu(d_i)`` (each step an
    upper bound, so the line holds on the whole box)."""
    lA_p, lA_n, uA_p, uA_n = parts
    win, onehot = _windows_onehot(l, args, idx)  # (O, K), (B, C, O, K)
    target = win.clamp(min=0)
    lead, hw = l.shape[:-2], l.shape[-2] * l.shape[-1]
    wl, wu, cu = _line_weights(state, l, u, win, onehot, idx, mu, exact, alpha)

    def spread(a, w):  # (S, B, C, oh, ow) coefficients on a line with weights w -> (S, B, C, H, W)
        s = a.shape[0]
        contrib = a.flatten(-2).unsqueeze(-1) * w  # (S, B, C, O, K)
        out = torch.zeros(s, *lead, hw, dtype=a.dtype, device=a.device)
        out.scatter_add_(-1, target.expand(*contrib.shape).flatten(-2), contrib.flatten(-2))
        return out.reshape(s, *l.shape)

    cu = cu.reshape(mu.shape)
    _add(pending, inp, spread(lA_p, wl) + spread(lA_n, wu), spread(uA_p, wu) + spread(uA_n, wl))
    return _sum_tail(lA_n * cu), _sum_tail(uA_p * cu)
