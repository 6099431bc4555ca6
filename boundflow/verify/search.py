"""The verifier's one branch-and-bound driver over activation splits.

The search keeps the queue, the choice of what to split, the exact leaves and the
counterexample checks; the bounds come from one query on a prepared model of the linear domain
(:class:`~boundflow.domains.linear.domain.LinearPrepared` for any graph, or its dense
specialisation for ReLU chains, :class:`~boundflow.domains.linear.chain_prepared.ChainPrepared`):
``bounds(box, OutputSpec(C, d), splits=, known=, warm=)`` returns every sub-domain's margin
lower bounds (beta-CROWN: the splits intersected into the intermediate bounds and added to the
objective with optimised multipliers), the sub-domains proved empty, the bounds of every split
node, branching scores and the parameters the children start from.

A sub-domain fixes some ReLU inputs active (``>= 0``) or inactive (``<= 0``), or narrows a
sigmoid/tanh input's range (GenBaB); it is *done* when every disjunct of the group has a row
with a lower bound > 0 on it (:func:`leaf_proved`) or it is empty.  Per batch (worst bounds
first): bound every sub-domain, check the open ones' candidate points, pick neurons to split
(the largest branching score — BaBSR's intercept — or, where the prepared model offers cheap
look-ahead bounds, the best of the top :data:`FSB_CANDIDATES` by their children's bounds:
filtered smart branching), and hand a sub-domain with few unstable neurons left (or nothing to
split) to the exact leaf (the MILP of the one network encoder).  Children inherit their
parent's bounds, slopes and multipliers.  ``unsat`` only when every sub-domain is done.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from boundflow import deadline as deadlines
from boundflow.specs import Box, OutputSpec

__all__ = [
    "bounded_so_far",
    "count_from_zero",
    "Outcome",
    "SearchModels",
    "SubDomain",
    "chain_boxes",
    "chain_models",
    "input_search",
    "leaf_proved",
    "relu_search",
    "root_pieces",
]

_PROGRESS = threading.local()


def count_from_zero() -> None:
    """Start this thread's count of bounded sub-domains (:func:`bounded_so_far`) at zero."""
    _PROGRESS.n = 0


def bounded_so_far() -> int:
    """Sub-domains (activation-split sub-domains and input boxes) the searches of this thread
    have bounded since :func:`count_from_zero`: what a search that ends by its deadline's
    exception still has to report."""
    return getattr(_PROGRESS, "n", 0)


def _bounded(n: int) -> None:
    _PROGRESS.n = bounded_so_far() + int(n)


def joined_status(status: str, part: str) -> str:
    """The answer of a conjunction so far (``status``, starting at ``"unsat"``) after one more
    part's answer other than ``sat``: ``unsat`` only while every part is; the first ``timeout``
    or ``unknown`` otherwise, ``timeout`` over ``unknown``."""
    if part == "unsat":
        return status
    return part if status in ("unsat", "unknown") else status


def leaf_proved(margin_lower: torch.Tensor, empty: torch.Tensor | None = None) -> torch.Tensor:
    """The one rule an ``unsat`` rests on, per leaf (box or sub-domain): some margin row has a
    sound lower bound > 0, or the leaf was proved empty (``empty``)."""
    proved = (margin_lower > 0).any(1)
    return proved | empty if empty is not None else proved


def group_proved(m: torch.Tensor, owner: torch.Tensor, n_groups: int, empty=None) -> torch.Tensor:
    """Per leaf: every disjunct of a group proved (:func:`leaf_proved` on its own rows; ``owner``
    gives each stacked row's disjunct), or the leaf empty."""
    proved = torch.ones(m.shape[0], dtype=torch.bool)
    for k in range(n_groups):
        proved &= leaf_proved(m[:, owner == k])
    return proved | empty if empty is not None else proved


def _group_value(m: torch.Tensor, owner: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per sub-domain how close it is to done: the worst disjunct's best row."""
    return torch.stack([m[:, owner == k].amax(1) for k in range(n_groups)], 1).amin(1)


@dataclass
class SearchModels:
    """The prepared models one search queries: ``root`` for the first batch (without known
    bounds; e.g. intermediate bounds optimised too), ``step`` for every later one; ``batch``
    sub-domains per query."""

    root: object
    step: object
    batch: int = 32


# beta-CROWN's iterations per batch of sub-domains
BETA_ITERATIONS = 20
# ReLU chains: alpha-CROWN iterations at the root (output rows and every hidden layer), and
# sub-domains per query
CHAIN_ROOT_ITERATIONS = 50
CHAIN_BATCH = 64


def chain_models(chain) -> SearchModels:
    """What :func:`relu_search` queries on a ReLU chain: the linear domain's dense
    specialisation, with alpha-CROWN on every hidden layer at the root."""
    from boundflow.domains.linear.chain_prepared import ChainPrepared

    return SearchModels(
        ChainPrepared(chain, iterations=CHAIN_ROOT_ITERATIONS, intermediate=CHAIN_ROOT_ITERATIONS),
        ChainPrepared(chain, iterations=BETA_ITERATIONS),
        batch=CHAIN_BATCH,
    )


# sub-domains with at most this many unstable ReLUs (and two splits or more) try the exact leaf
LEAF_UNSTABLE = 40
# filtered smart branching: this many best-scored neurons compared by their children's bounds
FSB_CANDIDATES = 4
# neurons split at once on one sub-domain while the search is narrower than a batch
MULTI_SPLIT_MAX = 4


def relu_search(
    models: SearchModels,
    group: list,
    deadline: float,
    check: Callable | None = None,
    start: list | None = None,
) -> tuple[str, int, object]:
    """Branch and bound on activation splits over the disjuncts ``group`` sharing one input box
    (their rows stacked: bounds are computed once for all; see the module docstring).
    ``check(x, dj)``: a witness (onnxruntime-confirmed) of disjunct ``dj`` at input ``x``, or
    ``None``.  ``start``: the :class:`SubDomain` s to search (together they must cover the part
    of the box the answer is about; default: the whole box).  Returns ``(status, sub-domains
    bounded, witness)``; ``unsat`` when every sub-domain is done or empty."""
    dj = group[0]
    C = torch.cat([g.C for g in group])
    d = torch.cat([g.d for g in group])
    owner = torch.cat([torch.full((len(g.C),), k) for k, g in enumerate(group)])
    queue = start or [SubDomain({}, torch.full((len(C),), -float("inf"), dtype=torch.float64))]
    n_done = 0
    last = 0.0  # seconds the previous batch took
    leaf_ok = None  # whether the exact leaf can take this graph (decided on first use)
    while queue:
        if time.monotonic() + last > deadline:
            return "timeout", n_done, None
        t_batch = time.monotonic()
        # the worst bounds first: they decide the answer
        queue.sort(key=lambda it: float(_group_value(it.floor[None], owner, len(group))[0]))
        items, queue = queue[: models.batch], queue[models.batch :]
        root = all(it.known is None for it in items)
        prepared = models.root if root else models.step
        b = len(items)
        lo = dj.lower[None].expand(b, -1).clone()
        hi = dj.upper[None].expand(b, -1).clone()
        # ReLU (and sigmoid/tanh) inputs of this batch size's graph (names are per graph)
        relu_inputs = prepared.split_nodes(b, dj.lower)
        general = [n for n in prepared.split_nodes(b, dj.lower, general=True) if n not in relu_inputs]
        names = relu_inputs + general
        shapes = prepared.node_shapes(b, dj.lower)
        splits, known = _constraints([it.splits for it in items], [it.known for it in items], names, shapes)
        res = prepared.bounds(Box(lo, hi), OutputSpec(C, d), splits=splits, known=known, warm=_stack_params(items))
        m = torch.maximum(res.lower, torch.stack([it.floor for it in items]).to(res.lower.dtype))
        done = group_proved(m, owner, len(group), res.empty)
        n_done += b
        _bounded(b)
        open_ = torch.nonzero(~done).reshape(-1).tolist()
        # while the open sub-domains fill less than a batch, split each on several neurons at
        # once (2^k children), so that no batch is spent on a handful of sub-domains
        k = max(1, min(MULTI_SPLIT_MAX, int(math.log2(max(1.0, models.batch / max(1, len(open_) + len(queue)))))))
        fsb = _lookahead(prepared, res, items, open_, relu_inputs, names, shapes, lo, hi, C, d, owner, len(group), k)
        for i in open_:
            chosen = fsb.get(i) or _branch_choices(res, relu_inputs, i, k) or _general_choices(res, general, i, k)
            depth = sum(len(v) for v in items[i].splits.values())
            few = sum(int(((t[0][i] < 0) & (t[1][i] > 0)).sum()) for t in (res.intermediate[n] for n in relu_inputs))
            if not chosen or (few <= LEAF_UNSTABLE and depth >= 2 and not general and leaf_ok is not False):
                if leaf_ok is None:
                    leaf_ok = _leaf_applies(prepared, dj, names, b, check)
                if leaf_ok:
                    st, w = _exact_leaf(prepared, group, owner, m[i], res, i, b, names, deadline, check)
                    if st == "unsat":
                        continue
                    if st == "sat":
                        return st, n_done, w
                if not chosen:  # every neuron fixed or too narrow to split, still not proved
                    return ("timeout" if time.monotonic() > deadline else "unknown"), n_done, None
            children = [items[i].splits]
            for name, j, pieces in chosen:
                children = [
                    {
                        **{n: dict(v) for n, v in c.items()},
                        name: {**c.get(name, {}), j: _child_range(c, name, j, piece, pieces)},
                    }
                    for c in children
                    for piece in pieces
                ]
            inherited = _row_params(res.params, i)
            known_i = [_outward32(*(t[i] for t in res.intermediate[name])) for name in names]
            queue.extend(SubDomain(c, m[i], inherited, known_i) for c in children)
        last = time.monotonic() - t_batch
    return "unsat", n_done, None


def root_pieces(models: SearchModels, group: list, n: int) -> tuple[str, list]:
    """The search's root, cut into ``2^k >= n`` :class:`SubDomain` s that together cover it (to
    share out): the root is bounded once (``models.root``), and the ``k`` unstable ReLUs with
    the largest branching score are fixed both ways; every piece starts from the root's
    bounds, slopes and multipliers.  ``("unsat", [])`` when the root is proved already."""
    dj = group[0]
    C, d = torch.cat([g.C for g in group]), torch.cat([g.d for g in group])
    owner = torch.cat([torch.full((len(g.C),), k) for k, g in enumerate(group)])
    prepared = models.root
    names = prepared.split_nodes(1, dj.lower)
    shapes = prepared.node_shapes(1, dj.lower)
    splits, _ = _constraints([{}], [None], names, shapes)
    res = prepared.bounds(Box(dj.lower[None], dj.upper[None]), OutputSpec(C, d), splits=splits)
    if bool(group_proved(res.lower, owner, len(group), res.empty)[0]):
        return "unsat", []
    k = max(0, math.ceil(math.log2(max(n, 1))))
    chosen = _branch_choices(res, names, 0, k)
    pieces = [{}]
    for name, j, halves in chosen:
        pieces = [{**p, name: {**p.get(name, {}), j: half}} for p in pieces for half in halves]
    params = _row_params(res.params, 0)
    known = [_outward32(*(t[0] for t in res.intermediate[name])) for name in names]
    return "open", [SubDomain(p, res.lower[0], params, known) for p in pieces]


@dataclass
class Outcome:
    """What :func:`input_search` ends with: ``status`` ``"unsat"``, ``"sat"`` (with the
    ``witness``), ``"timeout"``, ``"unknown"``, or ``"open"`` with the open boxes in ``open``
    (see ``stop_open``); ``domains``: the boxes bounded."""

    status: str
    witness: object = None
    domains: int = 0
    open: tuple | None = None


def input_search(
    bound: Callable,
    margins: Callable,
    lower: torch.Tensor,
    upper: torch.Tensor,
    check: Callable,
    deadline: float,
    *,
    candidates: int = 5,
    batch: int = 1024,
    stop_open: int | None = None,
    every: bool = False,
) -> Outcome:
    """Input-splitting branch and bound over ``[lower, upper]`` (one box ``(n,)`` or a batch
    ``(B, n)`` whose union is searched), the one driver for every graph.  ``bound(lo, hi,
    floor)``: the prepared model's :class:`~boundflow.domains.linear.chain_prepared.BoxBounds`
    of a batch of boxes (``floor``: sound lower bounds per box and row already known, a parent
    box's); ``margins(x)``: the margins at points; ``check(x)``: an onnxruntime-confirmed
    witness at ``x`` or ``None``.  Every queued box has its bounds already; per round the open
    boxes' ``candidates`` best-scored dimensions are each split in two, all children are
    bounded, and per box the dimension whose children have the better mean bound is kept (its
    children come with their bounds); with one candidate that is simply the best-scored
    dimension.  Candidate points of the open boxes whose margins are all <= 0 (``every``: any)
    are checked.  ``stop_open``: return ``"open"`` with the open boxes once at least this many
    are queued (to share them out).  ``every``: each row is its own disjunct over the box (a
    box is done when every row is proved)."""
    with deadlines.within(deadline):
        return _input_search(bound, margins, lower, upper, check, deadline, candidates, batch, stop_open, every)


def _input_search(bound, margins, lower, upper, check, deadline, candidates, batch, stop_open, every) -> Outcome:
    lo = (lower[None] if lower.dim() == 1 else lower).clone()
    hi = (upper[None] if upper.dim() == 1 else upper).clone()
    res = bound(lo, hi, None)
    _bounded(len(lo))
    if bool(res.proved.all()):
        return Outcome("unsat", domains=len(lo))
    keep = ~res.proved
    q_lo, q_hi, q_lb, q_sc, q_pt = lo[keep], hi[keep], res.lower[keep], res.scores[keep], res.points[keep]
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
        blo, bhi, blb, bsc, bpt = q_lo[:size], q_hi[:size], q_lb[:size], q_sc[:size], q_pt[:size]
        q_lo, q_hi, q_lb, q_sc, q_pt = q_lo[size:], q_hi[size:], q_lb[size:], q_sc[size:], q_pt[size:]
        n = len(blo)
        cand = bpt.reshape(-1, d)
        mg = margins(cand)
        worst = mg.amin(1) if every else mg.amax(1)
        for j in torch.nonzero(worst <= 0).reshape(-1)[:16].tolist():
            w = check(cand[j])
            if w is not None:
                return Outcome("sat", w, done)
        if bool((bsc < 0).all(1).any()):
            return Outcome("unknown", domains=done)  # a point that is not proved: nothing to split
        dims = bsc.topk(m, 1).indices  # (n, m)
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
        kid = bound(c_lo, c_hi, floor)
        done += len(c_lo)
        _bounded(len(c_lo))
        # per candidate the mean of its children's deciding rows (best row; every row: the
        # worst), a proved child counting as far above every bound seen
        best_row = kid.lower.amin(1) if every else kid.lower.amax(1)
        top = 1e3 * best_row.abs().max().clamp(min=1)
        val = torch.where(kid.proved, top, best_row).reshape(m, 2, n).mean(1)  # (m, n)
        best = val.argmax(0)
        pick = (torch.stack([2 * best, 2 * best + 1]) * n + rows[None]).reshape(-1)
        pick = pick[~kid.proved[pick]]
        q_lo, q_hi = torch.cat([c_lo[pick], q_lo]), torch.cat([c_hi[pick], q_hi])
        q_lb, q_sc = torch.cat([kid.lower[pick], q_lb]), torch.cat([kid.scores[pick], q_sc])
        q_pt = torch.cat([kid.points[pick], q_pt])
        per_box = (time.monotonic() - t0) / n
    return Outcome("unsat", domains=done)


def chain_boxes(chain, C: torch.Tensor, d: torch.Tensor, every: bool = False) -> tuple[Callable, Callable]:
    """``(bound, margins)`` for :func:`input_search` on a ReLU chain: the linear domain's dense
    specialisation (:meth:`~boundflow.domains.linear.chain_prepared.ChainPrepared.boxes`)."""
    from boundflow.domains.linear.chain_prepared import ChainPrepared

    prepared, spec = ChainPrepared(chain), OutputSpec(C.to(torch.float64), d.to(torch.float64))
    return (
        lambda lo, hi, floor: prepared.boxes(lo, hi, spec, floor, every=every),
        lambda x: prepared.margins(x, spec),
    )


def _constraints(splits: list[dict], known: list, names: list[str], shapes: dict) -> tuple[dict, dict | None]:
    """The query's ``splits`` and ``known`` for a batch of sub-domains: node name ->
    ``(lower, upper)`` batch-first, ``±inf`` where free.  A sub-domain's known bounds are
    stored by position (the same node in every batch size's graph, checked by its shape)."""
    b = len(splits)
    out_s, out_k = {}, {}
    for pos, name in enumerate(names):
        shape = shapes[name]
        s_lo = torch.full((b, *shape[1:]), -float("inf"), dtype=torch.float64).reshape(b, -1)
        s_hi = torch.full((b, *shape[1:]), float("inf"), dtype=torch.float64).reshape(b, -1)
        k_lo, k_hi = s_lo.clone(), s_hi.clone()
        for i in range(b):
            kn = known[i]
            if kn is not None and len(kn) == len(names) and kn[pos][0].shape == shape[1:]:
                k_lo[i], k_hi[i] = kn[pos][0].reshape(-1), kn[pos][1].reshape(-1)
            for idx, (a, z) in splits[i].get(name, {}).items():
                s_lo[i, idx], s_hi[i, idx] = a, z
        out_s[name] = (s_lo.reshape(b, *shape[1:]), s_hi.reshape(b, *shape[1:]))
        out_k[name] = (k_lo.reshape(b, *shape[1:]), k_hi.reshape(b, *shape[1:]))
    has_known = any(kn is not None for kn in known)
    return out_s, (out_k if has_known else None)


def _lookahead(prepared, res, items, open_, relu_inputs, names, shapes, lo, hi, C, d, owner, n_groups, k) -> dict:
    """Filtered smart branching where the prepared model gives cheap look-ahead bounds: per
    open sub-domain the ``k`` best of its :data:`FSB_CANDIDATES` best-scored ReLU neurons by
    the worse of their two children's bounds (computed with the parent's bounds, slopes and
    multipliers); ``{}`` elsewhere."""
    if not getattr(prepared, "cheap_lookahead", False) or not open_:
        return {}
    cands = {i: _branch_choices(res, relu_inputs, i, FSB_CANDIDATES) for i in open_}
    cands = {i: c for i, c in cands.items() if len(c) > 1}
    if not cands:
        return {}
    kids, parents = [], []
    for i, cs in cands.items():
        for name, j, pieces in cs:
            for piece in pieces:
                c = items[i].splits
                kids.append({**c, name: {**c.get(name, {}), j: _child_range(c, name, j, piece, pieces)}})
                parents.append(i)
    idx = torch.tensor(parents)
    splits, _ = _constraints(kids, [None] * len(kids), names, shapes)
    known = {n: (res.intermediate[n][0][idx], res.intermediate[n][1][idx]) for n in names}
    warm = {
        "alpha": {n: a[idx] for n, a in res.params.get("alpha", {}).items()},
        "beta": {n: t[:, :, idx] for n, t in res.params.get("beta", {}).items()},
    }
    kres = prepared.bounds(Box(lo[idx], hi[idx]), OutputSpec(C, d), splits=splits, known=known, warm=warm,
                           lookahead=True)  # fmt: skip
    value = _group_value(kres.lower, owner, n_groups)
    value = torch.where(kres.empty, float("inf"), value) if kres.empty is not None else value
    out, pos = {}, 0
    for i, cs in cands.items():
        v = value[pos : pos + 2 * len(cs)].reshape(len(cs), 2).amin(1)
        pos += 2 * len(cs)
        order = torch.argsort(v, descending=True).tolist()
        out[i] = [cs[r] for r in order[:k]]
    return out


# the exact leaf's MILP takes at most this many seconds, and a quarter of the time left
LEAF_SECONDS = 10.0
# graphs with more values than this (over all nodes, one sample) get no exact leaf: encoding
# them would take long and could not be stopped at the deadline
LEAF_MAX_VALUES = 20_000


def _leaf_applies(prepared, dj, names: list[str], b: int, check) -> bool:
    """Whether the exact leaf can take sub-domains of this search: the graph at batch one has
    the batch graph's split nodes (matched by position and shape) and at most
    :data:`LEAF_MAX_VALUES` values, and candidates can be checked."""
    relu1 = prepared.split_nodes(1, dj.lower)
    one = relu1 + [n for n in prepared.split_nodes(1, dj.lower, general=True) if n not in relu1]
    shapes_b, shapes_1 = prepared.node_shapes(b, dj.lower), prepared.node_shapes(1, dj.lower)
    if len(one) != len(names) or any(shapes_b[x][1:] != shapes_1[y][1:] for x, y in zip(names, one, strict=True)):
        return False
    n_values = sum(int(np.prod(s)) for s in shapes_1.values())
    return check is not None and n_values <= LEAF_MAX_VALUES


def _exact_leaf(prepared, group, owner, m_i, res, i: int, b: int, names: list[str], deadline: float, check):
    """Decide sub-domain ``i`` of a batch of ``b`` with the MILP of the one network encoder
    (:func:`boundflow.verify.leaf.decide`; :func:`_leaf_applies` must hold): its node ranges
    are the sub-domain's bounds on every split node (``res.intermediate``, the splits
    intersected); each disjunct of the group not yet proved there (``m_i``: its rows' lower
    bounds) is decided on its own, within :data:`LEAF_SECONDS` and a quarter of the time left.
    ``unsat`` when every one is, ``sat`` with an onnxruntime-confirmed witness, else
    ``unknown``/``timeout``."""
    from boundflow.verify.leaf import decide

    dj = group[0]
    g = prepared.graph(dj.lower[None])  # the graph at batch one: its names, matched by position
    relu1 = prepared.split_nodes(1, dj.lower)
    one = relu1 + [n for n in prepared.split_nodes(1, dj.lower, general=True) if n not in relu1]
    ranges = {y: (res.intermediate[x][0][i], res.intermediate[x][1][i]) for x, y in zip(names, one, strict=True)}
    status = "unsat"
    for k, dk in enumerate(group):
        if bool(leaf_proved(m_i[owner == k][None])[0]):
            continue
        budget = min(LEAF_SECONDS, 0.25 * (deadline - time.monotonic()))
        st, w = decide(g, dj.lower[None], dj.upper[None], dk.C, dk.d, ranges, deadline, budget,
                       lambda x, dk=dk: check(x, dk))  # fmt: skip
        if st == "sat":
            return st, w
        status = joined_status(status, st)
        if status != "unsat":
            break
    return status, None


@dataclass
class SubDomain:
    """One sub-domain of the ReLU search: its splits (node name -> {flat index: (lo, hi) the
    neuron is split to}), the parent's margin lower bounds (they hold on the child's sub-domain
    too), the parent's slopes and multipliers to start from, and the parent's bounds of every
    split node by position (float32, rounded outward; they hold on the child too, and settle
    the signs that need no CROWN row)."""

    splits: dict
    floor: torch.Tensor
    params: dict | None = None
    known: list | None = None


def _outward32(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi]`` in float32, rounded outward (the float32 range contains the float64 one)."""
    l32, h32 = lo.to(torch.float32), hi.to(torch.float32)
    l32 = torch.where(l32.to(lo.dtype) > lo, torch.nextafter(l32, torch.tensor(-float("inf"))), l32)
    h32 = torch.where(h32.to(hi.dtype) < hi, torch.nextafter(h32, torch.tensor(float("inf"))), h32)
    return l32, h32


def _child_range(dom: dict, name: str, j: int, piece: tuple, pieces: tuple) -> tuple[float, float]:
    """The range of neuron ``(name, j)`` on the child that takes ``piece`` of a two-way split:
    the parent's own split range cut at the split point (the end the two pieces share), so the
    children cover the parent exactly whatever the computed bounds that suggested the pieces
    (rounding never leaves a gap between sibling sub-domains)."""
    (point,) = set(pieces[0]) & set(pieces[1])
    lo, hi = dom.get(name, {}).get(j, (-float("inf"), float("inf")))
    return (max(lo, point), hi) if piece[0] == point else (lo, min(hi, point))


def _row_params(params: dict, i: int) -> dict | None:
    """Sub-domain ``i``'s slopes (float32, to keep the queue small) and multipliers (sparse:
    nonzero only at its split neurons) from a query's :attr:`Bounds.params`: what its children
    start from."""
    if not params:
        return None
    return {
        "alpha": {k: v[i].to(torch.float32) for k, v in params.get("alpha", {}).items()},
        "beta": {k: v[:, :, i].to(torch.float32).to_sparse() for k, v in params.get("beta", {}).items()},
    }


def _stack_params(items) -> dict | None:
    """The batch's ``warm`` start: per node, the stacked parameters of its sub-domains (slopes
    only where every sub-domain has them; multipliers zero where a sub-domain has none)."""
    rows = [it.params for it in items]
    if any(r is None for r in rows):
        return None
    warm: dict = {"alpha": {}, "beta": {}}
    for name in set.intersection(*(set(r["alpha"]) for r in rows)):
        parts = [r["alpha"][name] for r in rows]
        if all(t.shape == parts[0].shape for t in parts):
            warm["alpha"][name] = torch.stack(parts).to(torch.float64)
    for name in set().union(*(set(r["beta"]) for r in rows)):
        parts = [r["beta"].get(name) for r in rows]
        shape = next(t.shape for t in parts if t is not None)
        if all(t is None or t.shape == shape for t in parts):
            dense = [torch.zeros(shape, dtype=torch.float32) if t is None else t.to_dense() for t in parts]
            warm["beta"][name] = torch.stack(dense, 2).to(torch.float64)
    return warm


_RELU_PIECES = ((0.0, float("inf")), (-float("inf"), 0.0))  # active, inactive


def _branch_choices(res, relu_inputs: list[str], i: int, k: int) -> list[tuple[str, int, tuple]]:
    """Up to ``k`` ``(node name, flat index, the two pieces)`` of sub-domain ``i``'s unstable
    ReLU neurons, by branching score (:attr:`Bounds.scores`) where any is above 0, else by
    relaxation area ``u (-l) / (u - l)``; empty if no neuron is unstable."""
    for scored in (True, False):
        found = []
        for name in relu_inputs:
            l_, u_ = (t[i].reshape(-1) for t in res.intermediate[name])
            unstable = (l_ < 0) & (u_ > 0)
            if not unstable.any() or (scored and name not in res.scores):
                continue
            if scored:
                score = torch.where(unstable, res.scores[name][i].reshape(-1), torch.zeros_like(u_))
            else:
                score = torch.where(unstable, u_ * (-l_) / (u_ - l_).clamp(min=1e-12), torch.zeros_like(u_))
            top = torch.topk(score, min(k, len(score)))
            found += [(float(v), name, int(j)) for v, j in zip(top.values, top.indices, strict=True) if v > 0]
        if found:
            found.sort(key=lambda t: -t[0])
            return [(name, j, _RELU_PIECES) for _, name, j in found[:k]]
    return []


# a sigmoid/tanh input range narrower than this (relative) is not bisected again
GENERAL_MIN_WIDTH = 1e-6


def _general_choices(res, names: list[str], i: int, k: int) -> list[tuple[str, int, tuple]]:
    """Up to ``k`` sigmoid/tanh input neurons of sub-domain ``i`` to bisect at the middle of
    their current range (GenBaB), by branching score, else (no score above 0: the margin no
    longer depends on them through the relaxation, but the sub-domain may yet be found empty) by
    width; once no ReLU is left to split."""
    for scored in (True, False):
        found = []
        for name in names:
            if scored and name not in res.scores:
                continue
            l_, u_ = (t[i].reshape(-1) for t in res.intermediate[name])
            wide = (u_ - l_) > GENERAL_MIN_WIDTH * (1 + torch.maximum(l_.abs(), u_.abs()))
            value = res.scores[name][i].reshape(-1) if scored else u_ - l_
            score = torch.where(wide & torch.isfinite(l_ + u_), value, torch.zeros_like(u_))
            top = torch.topk(score, min(k, len(score)))
            for v, j in zip(top.values, top.indices, strict=True):
                if v > 0:
                    lo, hi = float(l_[j]), float(u_[j])
                    mid = (lo + hi) / 2
                    found.append((float(v), name, int(j), ((lo, mid), (mid, hi))))
        if found:
            found.sort(key=lambda t: -t[0])
            return [(name, j, pieces) for _, name, j, pieces in found[:k]]
    return []
