"""Batched CROWN, alpha-CROWN and beta-CROWN bounds on a :class:`~boundflow.domains.linear.chain.Chain`.

Layers ``z_i = W_i a_{i-1} + b_i`` (``a_{-1} = x``, ``a_i = relu(z_i)``).  A batch of ``B``
sub-domains each has an input box and, per hidden layer, split signs ``s`` in {-1, 0, +1}
(``+1``: the sub-domain only holds points with ``z >= 0``; ``-1``: ``z <= 0``).

:func:`backward` returns a lower bound of ``Lam . z_K`` over each sub-domain, given sound
bounds ``[l_i, u_i]`` on every earlier pre-activation (already intersected with the splits),
lower ReLU slopes ``alpha`` in [0, 1] (CROWN's adaptive choice where not given) and split
multipliers ``beta >= 0``.  The bound is sound for **every** such ``alpha`` and ``beta``:

* the ReLU relaxation (:func:`boundflow.domains.linear.relaxations.relu`) holds on the bounds;
* a split ``s z >= 0`` holds on the sub-domain, so ``Lam . z_K >= Lam . z_K - beta s z`` there
  and the minimum of the right-hand side over the relaxation is a lower bound (beta-CROWN's
  Lagrangian; Wang et al. 2021).

So the optimisers below may stop at any iterate; they keep the best bound seen per row.  Sound in
exact arithmetic on the chain's float64 weights (the verifier cross-checks the chain and the
network against onnxruntime before any ``unsat``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from boundflow.domains.linear.chain import Chain
from boundflow.domains.linear.relaxations import relu as relu_relaxation

__all__ = [
    "backward",
    "forward_bounds",
    "layer_bounds",
    "optimise",
    "Coefficients",
    "intersect_splits",
    "EMPTY_TOLERANCE",
]

from boundflow.domains.linear import EMPTY_TOLERANCE


@dataclass
class Coefficients:
    """What a backward pass leaves for branching: per hidden layer ``i < K`` the coefficient
    ``A_i`` of ``a_i`` (``(B, S, n_i)``), and the input coefficient ``(B, S, n_0)``."""

    a: list[torch.Tensor]
    x: torch.Tensor


def _concretize(lam_x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    c, r = (lo + hi) / 2, (hi - lo) / 2
    return torch.einsum("bsn,bn->bs", lam_x, c) - torch.einsum("bsn,bn->bs", lam_x.abs(), r)


def backward(
    chain: Chain,
    K: int,
    lam: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bounds: list[tuple[torch.Tensor, torch.Tensor]],
    alphas: list[torch.Tensor | None] | None = None,
    betas: list[torch.Tensor | None] | None = None,
    splits: list[torch.Tensor] | None = None,
    keep: bool = False,
) -> tuple[torch.Tensor, Coefficients | None]:
    """Lower bound ``(B, S)`` of ``lam . z_K`` (``lam``: ``(B or 1, S, n_K)``) over each
    sub-domain; ``bounds[i] = (l_i, u_i)`` of shape ``(B, n_i)`` for ``i < K``; ``alphas[i]``,
    ``betas[i]``: ``(B, S, n_i)`` (``None``: adaptive slope / no multiplier; slopes are clipped
    to [0, 1] and multipliers to >= 0, so any values give a sound bound); ``splits[i]``:
    ``(B, n_i)``.  ``keep``: also return the :class:`Coefficients`."""
    w, b = chain.weights, chain.biases
    bias = torch.einsum("bsn,n->bs", lam, b[K])
    kept = []
    for i in range(K - 1, -1, -1):
        a = lam @ w[i + 1]  # coefficient of a_i
        if keep:
            kept.append(a.expand(lo.shape[0], -1, -1))
        l, u = bounds[i]
        alpha = None if alphas is None else alphas[i]
        lo_a, lo_b, up_a, up_b = relu_relaxation(l[:, None], u[:, None], alpha)
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        lam = pos * lo_a + neg * up_a
        bias = bias + (neg * up_b).sum(-1) + (pos * lo_b).sum(-1)
        if betas is not None and betas[i] is not None:
            lam = lam - betas[i].clamp(min=0) * splits[i][:, None, :].to(lam.dtype)  # beta < 0 is not a multiplier
        bias = bias + torch.einsum("bsn,n->bs", lam, b[i])
    lam_x = lam @ w[0]
    lb = _concretize(lam_x, lo, hi) + bias
    return lb, (Coefficients(kept[::-1], lam_x) if keep else None)


def intersect_splits(
    l: torch.Tensor, u: torch.Tensor, split: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(l, u, empty)``: the bounds with the split constraints applied (active: ``l >= 0``,
    inactive: ``u <= 0``) and, per sub-domain, whether a split contradicts a sound bound by more
    than :data:`EMPTY_TOLERANCE` of its magnitude (a proof that the sub-domain holds no point)."""
    if split is None:
        return l, u, torch.zeros(l.shape[0], dtype=torch.bool, device=l.device)
    nl = torch.where(split > 0, l.clamp(min=0), l)
    nu = torch.where(split < 0, u.clamp(max=0), u)
    scale = 1 + torch.maximum(l.abs(), u.abs())
    empty = ((nl - nu) > EMPTY_TOLERANCE * scale).any(1)
    # a rounding-level crossing keeps the pair ordered (the split's side)
    nl, nu = torch.minimum(nl, nu), torch.maximum(nl, nu)
    return nl, nu, empty


def layer_bounds(
    chain: Chain,
    lo: torch.Tensor,
    hi: torch.Tensor,
    splits: list[torch.Tensor] | None = None,
    start: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    first: int = 0,
    cheap: bool = False,
    refine: bool = True,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """CROWN bounds ``(l_i, u_i)`` of every hidden pre-activation over each sub-domain,
    intersected with interval propagation, with ``start``'s bounds (sound ones from a parent
    domain) and with the splits; and the sub-domains proved empty.  Layers before ``first``
    are taken from ``start`` as they are (then only the splits are applied).  Back-substitution
    refines every neuron (:func:`_refine`); ``cheap``: :func:`forward_bounds` are intersected
    as well (the input must be small for them to be cheap)."""
    w, b = chain.weights, chain.biases
    B = lo.shape[0]
    c, r = (lo + hi) / 2, (hi - lo) / 2
    empty = torch.zeros(B, dtype=torch.bool, device=lo.device)
    fwd = forward_bounds(chain, lo, hi) if cheap else None
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for k in range(len(w) - 1):
        split = None if splits is None else splits[k]
        if start is not None and k < first:
            l, u, e = intersect_splits(*start[k], split)
            out.append((l, u))
            empty |= e
            continue
        if k == 0:
            mid = c @ w[0].T + b[0]
            rad = r @ w[0].abs().T
            l, u = mid - rad, mid + rad
        else:
            # interval step from the previous layer (and the cheap bounds)
            pl, pu = out[-1]
            al, au = pl.clamp(min=0), pu.clamp(min=0)
            mid, rad = (al + au) / 2 @ w[k].T + b[k], (au - al) / 2 @ chain.abs_weights()[k].T
            l, u = mid - rad, mid + rad
            if fwd is not None:
                l, u = torch.maximum(l, fwd[k][0]), torch.minimum(u, fwd[k][1])
            if start is not None:
                l, u = torch.maximum(l, start[k][0]), torch.minimum(u, start[k][1])
            if refine:
                l, u = _refine(chain, k, lo, hi, out, l, u)
        if start is not None:
            l, u = torch.maximum(l, start[k][0]), torch.minimum(u, start[k][1])
        l, u, e = intersect_splits(l, u, split)
        empty |= e
        out.append((l, u))
    return out, empty


def _refine(chain, k, lo, hi, out, l, u, only_unstable: bool = False, chunk: int = 1 << 16):
    """``(l, u)`` of layer ``k`` intersected with CROWN bounds: one back-substitution row pair
    per neuron, all sub-domains packed together (``chunk`` neurons at a time).  Stable neurons
    are refined too by default: their relaxation is exact already, but their bounds enter the
    next layer's interval step, which on deep networks (ACAS Xu) is sometimes tighter than
    CROWN (``only_unstable``: skip them; cheaper, and on ACAS Xu slower to prove)."""
    if only_unstable:
        bi, ni = torch.nonzero((l < 0) & (u > 0), as_tuple=True)
    else:
        bi, ni = torch.nonzero(torch.ones_like(l, dtype=torch.bool), as_tuple=True)
    if len(bi) == 0:
        return l, u
    l, u = l.clone(), u.clone()
    n = l.shape[1]
    for s in range(0, len(bi), chunk):
        b_, n_ = bi[s : s + chunk], ni[s : s + chunk]
        R = len(b_)
        lam = torch.zeros(R, 2, n, dtype=l.dtype, device=l.device)
        lam[torch.arange(R, device=l.device), 0, n_] = 1
        lam[torch.arange(R, device=l.device), 1, n_] = -1
        lb, _ = backward(chain, k, lam, lo[b_], hi[b_], [(pl[b_], pu[b_]) for pl, pu in out])
        l[b_, n_] = torch.maximum(l[b_, n_], lb[:, 0])
        u[b_, n_] = torch.minimum(u[b_, n_], -lb[:, 1])
    return l, u


def forward_bounds(chain: Chain, lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Bounds ``(l_i, u_i)`` of every hidden pre-activation from linear lower and upper
    functions of the input carried forward (symbolic intervals with CROWN's relaxation):
    cheap when the input is small (``O(n_0)`` per neuron), looser than :func:`layer_bounds`.
    Sound: an unstable ReLU's upper function is its chord (increasing) applied to the upper
    function, its lower one ``alpha`` (0 or 1) times the lower function; then each affine layer
    sends positive weights to the same side and negative ones to the other."""
    w, b = chain.weights, chain.biases
    B, n0 = lo.shape
    # functions as (B, n, n0 + 1): coefficients then constant
    eye = torch.cat(
        [torch.eye(n0, dtype=lo.dtype, device=lo.device), torch.zeros(n0, 1, dtype=lo.dtype, device=lo.device)], 1
    )
    f_lo = f_hi = eye[None].expand(B, -1, -1)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    absw = chain.abs_weights()
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for k in range(len(w) - 1):
        # W+ f_lo + W- f_hi = W f_c - |W| f_r (and + for the upper function), with f_c, f_r the
        # functions' centre and radius: two matrix products with every box's functions side
        # by side as columns
        f_c, f_r = (f_lo + f_hi) / 2, (f_hi - f_lo) / 2
        n_prev, m = f_c.shape[1], f_c.shape[2]
        cols_c = f_c.permute(1, 0, 2).reshape(n_prev, B * m)
        cols_r = f_r.permute(1, 0, 2).reshape(n_prev, B * m)
        g_c = (w[k] @ cols_c).reshape(-1, B, m).permute(1, 0, 2)
        g_r = (absw[k] @ cols_r).reshape(-1, B, m).permute(1, 0, 2)
        g_lo, g_hi = g_c - g_r, g_c + g_r
        g_lo[..., -1] += b[k]
        g_hi[..., -1] += b[k]
        l = torch.einsum("bnj,bj->bn", g_lo[..., :-1], c) - torch.einsum("bnj,bj->bn", g_lo[..., :-1].abs(), r)
        u = torch.einsum("bnj,bj->bn", g_hi[..., :-1], c) + torch.einsum("bnj,bj->bn", g_hi[..., :-1].abs(), r)
        l, u = l + g_lo[..., -1], u + g_hi[..., -1]
        if out:  # interval step from the previous layer as well
            pl, pu = out[-1]
            al, au = pl.clamp(min=0), pu.clamp(min=0)
            mid, rad = (al + au) / 2 @ w[k].T + b[k], (au - al) / 2 @ absw[k].T
            l, u = torch.maximum(l, mid - rad), torch.minimum(u, mid + rad)
        out.append((l, u))
        lo_a, _, up_a, up_b = relu_relaxation(l, u)
        f_lo = g_lo * lo_a[..., None]
        f_hi = g_hi * up_a[..., None]
        f_hi[..., -1] += up_b
    return out


def _adaptive(l: torch.Tensor, u: torch.Tensor, S: int) -> torch.Tensor:
    return (u >= -l).to(l.dtype)[:, None, :].expand(-1, S, -1).clone()


def _reached(best: torch.Tensor, stop_at: float, every: bool) -> bool:
    above = best > stop_at
    return bool((above.all(1) if every else above.any(1)).all())


def optimise(
    chain: Chain,
    K: int,
    lam: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bounds: list[tuple[torch.Tensor, torch.Tensor]],
    splits: list[torch.Tensor] | None = None,
    iters: int = 20,
    lr_alpha: float = 0.1,
    lr_beta: float = 0.05,
    init: tuple[list, list] | None = None,
    deadline: float | None = None,
    stop_at: float | None = 0.0,
    every: bool = False,
) -> tuple[torch.Tensor, tuple[list, list]]:
    """The best lower bound ``(B, S)`` of ``lam . z_K`` over Adam iterations on the ReLU slopes
    (and, with ``splits``, the split multipliers), and the parameters ``(alphas, betas)`` that
    gave it (per row, for warm starts).  Every iterate is sound, so the result is the
    elementwise maximum.  ``stop_at``: stop once, in every sub-domain, some row's bound exceeds
    it (``every``: every row's; ``None``: never)."""
    B, S = lo.shape[0], lam.shape[1]
    if init is None:
        alphas = [_adaptive(l, u, S) for l, u in bounds[:K]]
        betas = (
            [torch.zeros(B, S, s.shape[1], dtype=lo.dtype, device=lo.device) for s in splits[:K]]
            if splits is not None
            else None
        )
    else:
        alphas = [a.detach().clone() for a in init[0]]
        betas = [t.detach().clone() for t in init[1]] if init[1] is not None else None
    if betas is not None and not any(bool((s != 0).any()) for s in splits[:K]):
        betas = None
    with torch.no_grad():
        best, _ = backward(chain, K, lam, lo, hi, bounds, alphas, betas, splits)
    best_a = [a.clone() for a in alphas]
    best_b = [t.clone() for t in betas] if betas is not None else None
    if iters <= 0 or (stop_at is not None and _reached(best, stop_at, every)):
        return best, (best_a, best_b)
    for a in alphas:
        a.requires_grad_(True)
    groups = [{"params": alphas, "lr": lr_alpha}]
    if betas is not None:
        for t in betas:
            t.requires_grad_(True)
        groups.append({"params": betas, "lr": lr_beta})
    opt = torch.optim.Adam(groups)
    for _ in range(iters):
        if deadline is not None and time.monotonic() > deadline:
            break
        lb, _ = backward(chain, K, lam, lo, hi, bounds, alphas, betas, splits)
        with torch.no_grad():
            better = lb > best
            if better.any():
                best = torch.where(better, lb, best)
                m = better[:, :, None]
                best_a = [torch.where(m, a, ba) for a, ba in zip(alphas, best_a, strict=True)]
                if betas is not None:
                    best_b = [torch.where(m, t, bt) for t, bt in zip(betas, best_b, strict=True)]
            if stop_at is not None and _reached(best, stop_at, every):
                break
        opt.zero_grad()
        (-lb.sum()).backward()
        opt.step()
        with torch.no_grad():
            for a in alphas:
                a.clamp_(0, 1)
            if betas is not None:
                for t in betas:
                    t.clamp_(min=0)
    return best, (best_a, best_b)
