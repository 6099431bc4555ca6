"""Input-splitting branch and bound on a :class:`~boundflow.domains.linear.chain.Chain` for one disjunct.

The chain's output is the disjunct's margins ``C f(x) - d`` (unsafe iff every row is <= 0), so
a sub-domain is proved when some row's lower bound is > 0, when a convex combination of the
rows has a lower bound > 0 (``lambda >= 0`` summing to one: on an unsafe point every row, hence
the combination, is <= 0), or when its splits contradict sound bounds (empty).

* :func:`input_bab` splits input boxes (for few inputs, e.g. ACAS Xu's 5): batched CROWN on
  every box with all layer bounds recomputed, alpha on the boxes CROWN leaves open, and the split
  dimension chosen by trying every dimension on the open boxes and keeping the split whose worse
  child has the better bound (the children's bounds are already computed).
  (Wide inputs are split on ReLUs by the one search, :mod:`boundflow.verify.search`.)

Candidate counterexamples (box centres, the minimisers of the linear lower bounds) are checked
on the way through ``check``, which re-runs them in onnxruntime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from boundflow.domains.linear.chain import Chain
from boundflow.domains.linear.chain_bounds import backward, layer_bounds, optimise

__all__ = ["input_bab", "Outcome"]


@dataclass
class Outcome:
    status: str  # "unsat", "sat", "timeout", "unknown" ("open": see input_bab's stop_open)
    witness: object = None
    domains: int = 0
    open: tuple | None = None  # (lower, upper) of the open boxes, with status "open"


def _rows(chain: Chain) -> torch.Tensor:
    """Specification rows on the last layer: the identity, plus the uniform combination when
    there are several rows (its weights are optimised in :func:`_final_bound`)."""
    S = chain.widths[-1]
    return torch.eye(S, dtype=chain.weights[0].dtype)[None]


def _combined(chain: Chain, lo, hi, bounds, iters: int, deadline) -> torch.Tensor:
    """Lower bound of ``sum lambda_s m_s`` with ``lambda`` on the simplex, optimised by
    Adam on its softmax logits with CROWN's slopes (every ``lambda`` gives a sound bound)."""
    B, S, K = lo.shape[0], chain.widths[-1], len(chain.weights) - 1
    logits = torch.zeros(B, S, dtype=lo.dtype, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    best = torch.full((B,), -float("inf"), dtype=lo.dtype)
    for _ in range(iters):
        if deadline is not None and time.monotonic() > deadline:
            break
        lam = torch.softmax(logits, 1)[:, None, :]
        lb, _ = backward(chain, K, lam, lo, hi, bounds)
        with torch.no_grad():
            best = torch.maximum(best, lb[:, 0])
            if bool((best > 0).all()):
                break
        opt.zero_grad()
        (-lb.sum()).backward()
        opt.step()
    return best


def _proved(lb: torch.Tensor) -> torch.Tensor:
    return (lb > 0).any(1)


def _corners(lam_x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per sub-domain and row the input corner minimising the linear lower bound."""
    return torch.where(lam_x >= 0, lo[:, None, :], hi[:, None, :])


def _evaluate(chain: Chain, lam, lo, hi, deadline, alpha_iters: int, every: bool = False, floor=None):
    """Bounds of boxes: CROWN with refined layer bounds, then alpha on the boxes CROWN leaves
    unproved and (some row needed) the optimised combination of rows; ``(lb (B, S), input
    coefficients, proved)``.  ``every``: a box is proved when *every* row is (each row is its
    own disjunct on a shared box).  ``floor``: sound lower bounds already known per box and row
    (a parent box's), kept where better."""
    K, S = len(chain.weights) - 1, lam.shape[1]
    done = (lambda b: (b > 0).all(1)) if every else _proved
    with torch.no_grad():
        bounds, _ = layer_bounds(chain, lo, hi, cheap=True)
        lb, coef = backward(chain, K, lam, lo, hi, bounds, keep=True)
    if floor is not None:
        lb = torch.maximum(lb, floor)
    proved = done(lb)
    idx = torch.nonzero(~proved).reshape(-1)
    if len(idx) and alpha_iters:
        sub = [(bl[idx], bu[idx]) for bl, bu in bounds]
        lb2, _ = optimise(chain, K, lam, lo[idx], hi[idx], sub, iters=alpha_iters, deadline=deadline, every=every)
        lb[idx] = torch.maximum(lb[idx], lb2)
        still = ~done(lb[idx])
        if S > 1 and still.any() and not every:
            j = torch.nonzero(still).reshape(-1)
            comb = _combined(chain, lo[idx][j], hi[idx][j], [(a[j], b[j]) for a, b in sub], alpha_iters, deadline)
            still[j[comb > 0]] = False
        proved[idx[~still]] = True
    return lb, coef.x, proved


def input_bab(
    chain: Chain,
    lower: torch.Tensor,
    upper: torch.Tensor,
    check: Callable[[torch.Tensor], object],
    deadline: float,
    batch: int = 1024,
    alpha_iters: int = 10,
    candidates: int = 5,
    stop_open: int | None = None,
    every: bool = False,
) -> Outcome:
    """Input-splitting branch and bound over ``[lower, upper]`` (one box ``(d,)``, or a batch
    ``(B, d)`` whose union is searched).  Every box in the queue has its bounds already; per
    round the open boxes' ``candidates`` dimensions with the largest ``|input coefficient| *
    width`` of the best row (all of them for ACAS Xu's 5 inputs) are each split in two, all
    children are bounded, and per box the dimension whose children have the better mean bound
    is kept (the children come with their bounds).  ``stop_open``: return ``"open"`` with the
    open boxes in ``Outcome.open`` once at least this many are queued (to share them out).
    ``every``: each row is a disjunct of its own over the same box (unsafe where that row is
    <= 0), so a box is proved when every row is, and a candidate is checked when any row is
    <= 0; a row proved on a box stays proved on its children (the parent's bound holds there)."""
    lam = _rows(chain)
    lo, hi = (lower[None] if lower.dim() == 1 else lower).clone(), (upper[None] if upper.dim() == 1 else upper).clone()
    lb, lx, proved = _evaluate(chain, lam, lo, hi, deadline, alpha_iters, every)
    if bool(proved.all()):
        return Outcome("unsat", domains=len(lo))
    q_lo, q_hi, q_lb, q_lx = lo[~proved], hi[~proved], lb[~proved], lx[~proved]
    done = len(lo)
    d = lo.shape[1]
    m = min(candidates, d)
    per_box = 0.0  # seconds per box of the previous round: no round is started that would overrun
    while len(q_lo):
        if stop_open is not None and len(q_lo) >= stop_open:
            return Outcome("open", domains=done, open=(q_lo, q_hi))
        left = deadline - time.monotonic()
        # half the time left at the measured rate: rounds differ in cost (alpha, open boxes)
        size = batch if per_box == 0 else min(batch, int(0.5 * left / per_box))
        if size < 1:
            return Outcome("timeout", domains=done)
        t0 = time.monotonic()
        blo, bhi, blb, blx = q_lo[:size], q_hi[:size], q_lb[:size], q_lx[:size]
        q_lo, q_hi, q_lb, q_lx = q_lo[size:], q_hi[size:], q_lb[size:], q_lx[size:]
        n = len(blo)
        # counterexample candidates: the centres and the bounds' minimising corners
        cand = torch.cat([(blo + bhi) / 2, _corners(blx, blo, bhi).reshape(-1, d)])
        with torch.no_grad():
            worst = chain(cand).amin(1) if every else chain(cand).amax(1)
        for j in torch.nonzero(worst <= 0).reshape(-1)[:16].tolist():
            w = check(cand[j])
            if w is not None:
                return Outcome("sat", w, done)
        width = bhi - blo
        if bool((width <= 0).all(1).any()):
            return Outcome("unknown", domains=done)  # a point that is not proved: nothing to split
        # the row that decides: the best one when some row suffices, else the worst unproved one
        row = torch.where(blb > 0, float("inf"), blb).argmin(1) if every else blb.argmax(1)
        sb = blx[torch.arange(n), row].abs() * width
        sb = torch.where(width > 0, sb + 1e-12 * width, -1.0)
        dims = sb.topk(m, 1).indices  # (n, m)
        mids = (blo + bhi) / 2
        c_lo = blo[None].repeat(2 * m, 1, 1)  # (2m, n, d): candidate c's left child, then right
        c_hi = bhi[None].repeat(2 * m, 1, 1)
        rows = torch.arange(n)
        for c in range(m):
            dim = dims[:, c]
            c_hi[2 * c, rows, dim] = mids[rows, dim]
            c_lo[2 * c + 1, rows, dim] = mids[rows, dim]
        c_lo, c_hi = c_lo.reshape(-1, d), c_hi.reshape(-1, d)
        floor = blb[None].expand(2 * m, -1, -1).reshape(-1, blb.shape[1])
        clb, clx, cproved = _evaluate(chain, lam, c_lo, c_hi, deadline, alpha_iters, every, floor)
        done += len(c_lo)
        # per candidate the mean of its children's deciding rows (best row; every row: the
        # worst), a proved child counting as far above every bound seen
        best_row = clb.amin(1) if every else clb.amax(1)
        top = 1e3 * best_row.abs().max().clamp(min=1)
        val = torch.where(cproved, top, best_row).reshape(m, 2, n).mean(1)  # (m, n)
        best = val.argmax(0)
        pick = torch.stack([2 * best, 2 * best + 1]) * n + rows[None]  # (2, n)
        pick = pick.reshape(-1)
        keep = pick[~cproved[pick]]
        q_lo, q_hi = torch.cat([c_lo[keep], q_lo]), torch.cat([c_hi[keep], q_hi])
        q_lb, q_lx = torch.cat([clb[keep], q_lb]), torch.cat([clx[keep], q_lx])
        per_box = (time.monotonic() - t0) / n
    return Outcome("unsat", domains=done)
