"""Branch and bound on a :class:`~boundflow.domains.linear.chain.Chain` for one disjunct.

The chain's output is the disjunct's margins ``C f(x) - d`` (unsafe iff every row is <= 0), so
a sub-domain is proved when some row's lower bound is > 0, when a convex combination of the
rows has a lower bound > 0 (``lambda >= 0`` summing to one: on an unsafe point every row, hence
the combination, is <= 0), or when its splits contradict sound bounds (empty).

* :func:`input_bab` splits input boxes (for few inputs, e.g. ACAS Xu's 5): batched CROWN on
  every box with all layer bounds recomputed, alpha on the boxes CROWN leaves open, and the split
  dimension chosen by trying every dimension on the open boxes and keeping the split whose worse
  child has the better bound (the children's bounds are already computed).
* :func:`relu_bab` splits unstable ReLUs (for wide inputs): root bounds with alpha-CROWN on every
  layer, then batches of sub-domains bounded by alpha-beta-CROWN (warm-started from the parent),
  layer bounds after the split layer recomputed, and the neuron chosen among the best few by an
  intercept (BaBSR-style) score by the children's actual bounds (FSB).  A sub-domain with few
  unstable ReLUs left is finished exactly by the MILP (:func:`milp_leaf`).

Candidate counterexamples (box centres, the minimisers of the linear lower bounds) are checked
on the way through ``check``, which re-runs them in onnxruntime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from boundflow.domains.linear.chain import Chain
from boundflow.domains.linear.chain_bounds import backward, intersect_splits, layer_bounds, optimise

__all__ = ["input_bab", "relu_bab", "relu_root", "milp_leaf", "Outcome"]


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


@dataclass
class _Domain:
    splits: list[torch.Tensor]  # per hidden layer (n_i,) int8
    lb: float
    params: tuple | None = None  # (alphas, betas) per hidden layer, (1, S, n_i)
    depth: int = 0


def _stack_splits(doms: list[_Domain]) -> list[torch.Tensor]:
    return [torch.stack([d.splits[i] for d in doms]) for i in range(len(doms[0].splits))]


def relu_root(chain: Chain, lower, upper, splits, deadline: float, root_iters: int = 50):
    """Root bounds of the ReLU search over ``[lower, upper]`` with ``splits``: CROWN layer
    bounds, alpha-CROWN on each hidden layer in turn, then on the specification.  Returns
    ``(outcome, layer bounds, lower bound, (alphas, betas))``; ``outcome`` is ``unsat`` when the
    root is proved (or empty), ``timeout`` past the deadline, else ``None``."""
    K = len(chain.weights) - 1
    dtype = lower.dtype
    lam = _rows(chain)
    lo, hi = lower[None], upper[None]
    if splits is None:
        splits = [torch.zeros(n, dtype=torch.int8) for n in chain.widths[:-1]]
    sp0 = [s[None] for s in splits]
    # root: CROWN layer bounds, then alpha-CROWN on each hidden layer in turn
    with torch.no_grad():
        root, empty = layer_bounds(chain, lo, hi, sp0)
    if bool(empty.all()):
        return Outcome("unsat", domains=1), None, None, None
    for k in range(1, K):
        if time.monotonic() > deadline:
            return Outcome("timeout"), None, None, None
        n = chain.widths[k]
        eye = torch.eye(n, dtype=dtype)
        l, u = root[k]
        unstable = ((l < 0) & (u > 0))[0]
        if not unstable.any():
            continue
        rows = torch.cat([eye[unstable], -eye[unstable]])[None]
        lbk, _ = optimise(chain, k, rows, lo, hi, root, sp0, iters=root_iters, deadline=deadline, stop_at=None)
        m = int(unstable.sum())
        nl, nu = l.clone(), u.clone()
        nl[0, unstable] = torch.maximum(l[0, unstable], lbk[0, :m])
        nu[0, unstable] = torch.minimum(u[0, unstable], -lbk[0, m:])
        root[k] = (nl, nu)
        # later layers from the improved bounds
        with torch.no_grad():
            root, empty = layer_bounds(chain, lo, hi, sp0, start=root, first=k + 1)
        if bool(empty.all()):
            return Outcome("unsat", domains=1), None, None, None
    lb, params = optimise(chain, K, lam, lo, hi, root, sp0, iters=root_iters, deadline=deadline)
    if _proved(lb).all():
        return Outcome("unsat", domains=1), None, None, None
    return None, root, lb, params


def relu_bab(
    chain: Chain,
    lower: torch.Tensor,
    upper: torch.Tensor,
    check: Callable[[torch.Tensor], object],
    deadline: float,
    batch: int = 64,
    iters: int = 20,
    root_iters: int = 50,
    candidates: int = 4,
    milp_unstable: int = 40,
    milp_time: float = 10.0,
    splits: list[torch.Tensor] | None = None,
    root: tuple | None = None,
) -> Outcome:
    """ReLU-splitting branch and bound with alpha-beta-CROWN bounds (see the module docstring).
    ``splits``: per hidden layer ``(n_i,)`` signs that restrict the search to one sub-domain
    (the pieces of :mod:`boundflow.verify.parallel`); ``unsat`` then covers that sub-domain only.
    ``root``: ``(layer bounds, (alphas, betas))`` from :func:`relu_root` over the whole box
    (sound for every sub-domain of it), instead of computing them here."""
    K = len(chain.weights) - 1
    lam = _rows(chain)
    S = lam.shape[1]
    lo, hi = lower[None], upper[None]
    if splits is None:
        splits = [torch.zeros(n, dtype=torch.int8) for n in chain.widths[:-1]]
    if root is None:
        settled, bounds0, lb, params = relu_root(chain, lower, upper, splits, deadline, root_iters)
        if settled is not None:
            return settled
        root = (bounds0, params)
        top = float(lb.max())
    else:
        top = -float("inf")
    root, params = root
    depth = sum(int((s != 0).sum()) for s in splits)
    queue = [_Domain([s.clone() for s in splits], top, params, depth)]
    done = 0
    last = 0.0
    while queue:
        if time.monotonic() + last > deadline:
            return Outcome("timeout", domains=done)
        t0 = time.monotonic()
        queue.sort(key=lambda d: d.lb)  # the worst bounds first (they decide the answer)
        doms, queue = queue[:batch], queue[batch:]
        B = len(doms)
        splits = _stack_splits(doms)
        # layers up to the first one with a split keep the root bounds
        first = min([k for k, s in enumerate(splits) if bool((s != 0).any())] or [K])
        start = [(l.expand(B, -1), u.expand(B, -1)) for l, u in root]
        with torch.no_grad():
            bounds, empty = layer_bounds(
                chain, lo.expand(B, -1), hi.expand(B, -1), splits, start=start, first=first + 1
            )
        init = _merge_params([d.params for d in doms], B, S)
        blo, bhi = lo.expand(B, -1), hi.expand(B, -1)
        lbs, params = optimise(chain, K, lam, blo, bhi, bounds, splits, iters=iters, init=init, deadline=deadline)
        proved = _proved(lbs) | empty
        done += int(proved.sum())
        open_idx = torch.nonzero(~proved).reshape(-1).tolist()
        if open_idx:
            with torch.no_grad():
                lb_chk, coef = backward(chain, K, lam, blo, bhi, bounds, params[0], params[1], splits, keep=True)
            # counterexample candidates: the minimisers of the bounds of the open domains
            cand = _corners(coef.x[open_idx], blo[open_idx], bhi[open_idx]).reshape(-1, blo.shape[1])
            with torch.no_grad():
                worst = chain(cand).amax(1)
            for j in torch.nonzero(worst <= 0).reshape(-1)[:8].tolist():
                w = check(cand[j])
                if w is not None:
                    return Outcome("sat", w, done)
            children = _branch(chain, K, lam, blo, bhi, bounds, params, splits, coef, lbs, open_idx, candidates)
            for i, (k, j) in zip(open_idx, children, strict=True):
                if k is None:
                    # every ReLU is fixed and the bound is still not positive: the LP of this
                    # sub-domain is exact, so the MILP decides it
                    st = milp_leaf(chain, lower, upper, bounds, i, deadline, milp_time, check)
                    if st.status == "unsat":
                        done += 1
                        continue
                    return Outcome(st.status if st.status != "unsat" else "unknown", st.witness, done)
                n_unstable = sum(int(((l[i] < 0) & (u[i] > 0)).sum()) for l, u in bounds)
                if n_unstable <= milp_unstable and doms[i].depth >= 2:
                    budget = min(milp_time, 0.25 * (deadline - time.monotonic()))
                    st = milp_leaf(chain, lower, upper, bounds, i, deadline, budget, check)
                    if st.status == "unsat":
                        done += 1
                        continue
                    if st.status == "sat":
                        return Outcome("sat", st.witness, done)
                for sign in (1, -1):
                    sp = [s[i].clone() for s in splits]
                    sp[k][j] = sign
                    p = (
                        [a[i : i + 1] for a in params[0]],
                        None if params[1] is None else [t[i : i + 1] for t in params[1]],
                    )
                    queue.append(_Domain(sp, float(lbs[i].max()), p, doms[i].depth + 1))
        last = time.monotonic() - t0
    return Outcome("unsat", domains=done)


def _merge_params(ps: list, B: int, S: int):
    """Stack per-domain warm starts ``(alphas, betas)``; betas default to zero."""
    alphas = [torch.cat([p[0][i] for p in ps]) for i in range(len(ps[0][0]))]
    betas = []
    for i in range(len(alphas)):
        parts = []
        for p in ps:
            if p[1] is not None:
                parts.append(p[1][i])
            else:
                parts.append(torch.zeros_like(p[0][i]))
        betas.append(torch.cat(parts))
    return alphas, betas


def _branch(chain, K, lam, lo, hi, bounds, params, splits, coef, lbs, open_idx, candidates):
    """Per open sub-domain the neuron ``(layer, index)`` to split, or ``(None, None)`` when no
    ReLU is unstable.  Scores: the intercept the upper relaxation adds to the bound
    (``-min(A, 0) * u (-l) / (u - l)``, BaBSR-style), for the row with the best bound; the best
    ``candidates`` are then compared by the bounds of their two children (FSB), computed with the
    parent's slopes and multipliers."""
    idx = torch.tensor(open_idx)
    row = lbs[idx].argmax(1)
    scores, where = [], []
    for k, (l, u) in enumerate(bounds):
        li, ui = l[idx], u[idx]
        a = coef.a[k][idx, row]  # (n, n_k)
        unstable = (li < 0) & (ui > 0)
        inter = (-a.clamp(max=0)) * ui * (-li) / (ui - li).clamp(min=1e-300)
        s = torch.where(unstable, inter + 1e-6 * a.abs() * torch.minimum(ui, -li), -float("inf"))
        scores.append(s)
        where += [(k, j) for j in range(s.shape[1])]
    score = torch.cat(scores, 1)  # (n, total)
    m = min(candidates, score.shape[1])
    top = score.topk(m, 1)
    out: list[tuple] = []
    n = len(open_idx)
    # children of every candidate: (m, 2, n)
    if m > 1:
        c_splits = [s[idx].repeat(2 * m, 1) for s in splits]
        offsets = [0]
        for s in scores:
            offsets.append(offsets[-1] + s.shape[1])
        for c in range(m):
            for side, sign in enumerate((1, -1)):
                rows = torch.arange(n) + (2 * c + side) * n
                for r, flat in zip(rows.tolist(), top.indices[:, c].tolist(), strict=True):
                    k, j = where[flat]
                    c_splits[k][r, j] = sign
        c_bounds = []
        for k, (l, u) in enumerate(bounds):
            cl, cu, _ = intersect_splits(l[idx].repeat(2 * m, 1), u[idx].repeat(2 * m, 1), c_splits[k])
            c_bounds.append((cl, cu))
        al = [a[idx].repeat(2 * m, 1, 1) for a in params[0]]
        be = None if params[1] is None else [t[idx].repeat(2 * m, 1, 1) for t in params[1]]
        if be is None:
            be = [torch.zeros_like(a) for a in al]
        with torch.no_grad():
            clb, _ = backward(
                chain, K, lam, lo[idx].repeat(2 * m, 1), hi[idx].repeat(2 * m, 1), c_bounds, al, be, c_splits
            )
        child = clb.amax(1).reshape(m, 2, n).amin(1)  # (m, n)
        child = torch.where(torch.isfinite(top.values.T), child, -float("inf"))
        best = child.argmax(0)
        chosen = top.indices.gather(1, best[:, None]).squeeze(1)
        vals = top.values.gather(1, best[:, None]).squeeze(1)
    else:
        chosen, vals = top.indices[:, 0], top.values[:, 0]
    for flat, v in zip(chosen.tolist(), vals.tolist(), strict=True):
        out.append(where[flat] if v > -float("inf") else (None, None))
    return out


def milp_leaf(chain, lower, upper, bounds, i, deadline, time_limit, check) -> Outcome:
    """Decide sub-domain ``i`` exactly with the MILP of the one network encoder
    (:func:`boundflow.verify.leaf.decide`) over the chain (its output: the margins) with the
    sub-domain's layer bounds (splits already intersected into them) as node ranges; ``unsat``
    only on a proven dual bound > 0 or an empty sub-domain."""
    from boundflow.verify.leaf import decide

    g, names = chain.graph()
    ranges = {name: (l[i], u[i]) for name, (l, u) in zip(names, bounds, strict=True)}
    S = chain.widths[-1]
    C = torch.eye(S, dtype=torch.float64)
    status, w = decide(g, lower[None], upper[None], C, None, ranges, deadline, time_limit, check)
    return Outcome(status, w)
