"""Branch and bound spread over worker processes or a Ray cluster.

A disjunct's search space is cut into *pieces* that together cover it, and each piece is
searched by the serial code (:func:`~boundflow.verify.bab.input_bab` or
:func:`~boundflow.verify.bab.relu_bab`) in a worker:

* input splitting: the serial search's own rounds run here until ``2 n`` boxes are open (for
  ``n`` workers); the open queue is dealt out round robin, one batch of boxes per worker;
* ReLU splitting: the root bounds (alpha-CROWN on every layer) are computed here once; the
  unstable ReLUs with the largest intercept (BaBSR) scores there are fixed both ways, giving
  ``2^k`` sub-domains (split constraints, as in the serial search) that start from the root's
  bounds and slopes.

The answer is combined as the serial search would give it: ``sat`` as soon as any piece has a
counterexample (re-checked in onnxruntime in the worker, as serially), ``unsat`` only when
every piece of every disjunct is ``unsat``, otherwise ``timeout``/``unknown``.  A piece's proof
covers its part of the space, so the verdicts equal the serial run's whenever both finish
(both are sound and complete on ReLU chains); only the witness and the time may differ.

The same tasks run on :class:`solvers.executor.ProcessExecutor` (``spawn`` processes on this
machine) or :class:`solvers.executor.RayExecutor` (a local Ray or a cluster).  Deadlines travel
as wall-clock times, so a task that waits in the queue gets only the time left.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from dataclasses import dataclass

import torch

from boundflow.domains.linear.chain import Chain
from boundflow.domains.linear.chain_bounds import backward, layer_bounds
from boundflow.verify.bab import Outcome, _rows, input_bab, relu_bab, relu_root

__all__ = ["Piece", "pieces", "solve_piece", "search_pieces", "warm_up"]


@dataclass
class Piece:
    """One part of a disjunct's search space, with everything a worker needs."""

    disjunct: int  # index of the disjunct it belongs to
    kind: str  # "input" or "relu"
    chain: Chain  # with the disjunct's specification as its last layer
    lower: torch.Tensor
    upper: torch.Tensor
    splits: list[torch.Tensor] | None  # ReLU signs per hidden layer ("relu" pieces)
    checker: object  # re-runs candidates in onnxruntime (pickled as the model's bytes)
    dj: object  # the disjunct (for the checker)
    threads: int = 1
    root: tuple | None = None  # ("relu") the root's layer bounds and slopes, shared by all pieces


def input_pieces(chain: Chain, lower: torch.Tensor, upper: torch.Tensor, n: int, deadline: float, check) -> Outcome:
    """The serial search's own first rounds until ``n`` boxes are open: ``"open"`` with them in
    ``Outcome.open``, or the search's answer if it finished first (``"unsat"``, ``"sat"``, ...)."""
    return input_bab(chain, lower, upper, check, deadline, stop_open=n)


def relu_pieces(
    chain: Chain, lower: torch.Tensor, upper: torch.Tensor, n: int, bounds: list | None = None
) -> list[list[torch.Tensor]]:
    """Split signs for ``2^k >= n`` sub-domains: the ``k`` unstable ReLUs with the largest
    intercept score of CROWN's best row, each fixed active and inactive (fewer when fewer are
    unstable; one piece without splits when none is).  ``bounds``: layer bounds to use
    (default: CROWN's)."""
    K = len(chain.weights) - 1
    lam = _rows(chain)
    lo, hi = lower[None], upper[None]
    with torch.no_grad():
        if bounds is None:
            bounds, _ = layer_bounds(chain, lo, hi)
        lb, coef = backward(chain, K, lam, lo, hi, bounds, keep=True)
    row = int(lb[0].argmax())
    where, scores = [], []
    for k, (l, u) in enumerate(bounds):
        a = coef.a[k][0, row]
        l, u = l[0], u[0]
        unstable = (l < 0) & (u > 0)
        s = (-a.clamp(max=0)) * u * (-l) / (u - l).clamp(min=1e-300) + 1e-6 * a.abs() * torch.minimum(u, -l)
        for j in torch.nonzero(unstable).reshape(-1).tolist():
            where.append((k, j))
            scores.append(float(s[j]))
    k_split = min(max(0, math.ceil(math.log2(max(n, 1)))), len(where))
    chosen = [where[i] for i in sorted(range(len(where)), key=lambda i: -scores[i])[:k_split]]
    out = []
    for bits in range(2**k_split):
        sp = [torch.zeros(w, dtype=torch.int8) for w in chain.widths[:-1]]
        for b, (k, j) in enumerate(chosen):
            sp[k][j] = 1 if (bits >> b) & 1 == 0 else -1
        out.append(sp)
    return out


def pieces(
    chain: Chain, dj, index: int, checker, n: int, input_split_max: int, deadline: float, threads: int = 1
) -> tuple[Outcome, list[Piece]]:
    """The pieces of disjunct ``dj`` (number ``index``) for ``n`` workers, and the outcome of
    cutting it up: ``"open"`` (its ``domains`` were bounded here), or the answer when that
    already settled it (``unsat``: no pieces; ``sat``: a counterexample)."""
    spec = chain.with_spec(dj.C.to(torch.float64), dj.d.to(torch.float64))
    if len(dj.lower) <= input_split_max:
        out = input_pieces(spec, dj.lower, dj.upper, 2 * n, deadline, lambda x: checker.check(x, dj))
        if out.status in ("unsat", "sat"):
            return out, []
        if out.status != "open":  # ran out of time before there was anything to share
            return Outcome("open"), [Piece(index, "input", spec, dj.lower, dj.upper, None, checker, dj, threads)]
        lo, hi = out.open
        # round robin over the queue (worst bounds spread evenly): one batch of boxes per worker
        return out, [Piece(index, "input", spec, lo[w::n], hi[w::n], None, checker, dj, threads) for w in range(n)]
    # the root (alpha-CROWN on every layer) once, here: it often settles the disjunct, and
    # every piece starts from its bounds and slopes instead of recomputing them
    settled, bounds, _, params = relu_root(spec, dj.lower, dj.upper, None, deadline)
    if settled is not None:
        return settled, []
    return Outcome("open", domains=1), [
        Piece(index, "relu", spec, dj.lower, dj.upper, sp, checker, dj, threads, (bounds, params))
        for sp in relu_pieces(spec, dj.lower, dj.upper, 2 * n, bounds)
    ]


def solve_piece(task: bytes) -> tuple[int, str, object, int]:
    """Search one piece (a pickled ``(Piece, wall-clock deadline)``) until the deadline:
    ``(disjunct, status, witness, domains)``.  Tasks travel as plain pickles: torch's
    shared-memory hand-over of tensors would leave the sender's file-descriptor server talking
    to a worker that is terminated after a counterexample."""
    piece, wall_deadline = pickle.loads(task)
    torch.set_num_threads(max(1, piece.threads))
    deadline = time.monotonic() + (wall_deadline - time.time())
    if deadline <= time.monotonic():
        return piece.disjunct, "timeout", None, 0

    def check(x):
        return piece.checker.check(x, piece.dj)

    if piece.kind == "input":
        out = input_bab(piece.chain, piece.lower, piece.upper, check, deadline)
    else:
        out = relu_bab(piece.chain, piece.lower, piece.upper, check, deadline, splits=piece.splits, root=piece.root)
    return piece.disjunct, out.status, out.witness, out.domains


def warm_up(_: object = None) -> int:
    """Run in each worker when the pool starts: pays the imports before the search needs them."""
    import boundflow.verify.bab  # noqa: F401

    return os.getpid()


def search_pieces(executor, tasks: list[Piece], wall_deadline: float) -> Outcome:
    """Search every piece on ``executor``; the combined answer (see the module docstring)."""
    status, domains = "unsat", 0
    results = executor.imap(solve_piece, [pickle.dumps((p, wall_deadline)) for p in tasks])
    try:
        for _, (_, st, w, nb) in results:
            domains += nb
            if st == "sat":
                return Outcome("sat", w, domains)
            if st != "unsat":
                status = "timeout" if "timeout" in (st, status) else st
    finally:
        results.close()  # stops the outstanding pieces after a counterexample
    return Outcome(status, domains=domains)
