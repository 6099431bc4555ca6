"""Branch and bound spread over worker processes or a Ray cluster.

A disjunct's search space is cut into *pieces* that together cover it, and each piece is
searched by the serial code (the one input-splitting search,
:func:`~boundflow.verify.search.input_search`, or the one activation-splitting search,
:func:`~boundflow.verify.search.relu_search`) in a worker:

* input splitting: the serial search's own rounds run here until ``2 n`` boxes are open (for
  ``n`` workers); the open queue is dealt out round robin, one batch of boxes per worker;
* activation splitting (ReLU chains, and any other graph with wide inputs, whose network the
  workers import again from its ONNX bytes): the root bounds (alpha-CROWN on every layer)
  are computed here once; the unstable ReLUs with the largest intercept (BaBSR) scores there
  are fixed both ways, giving ``2^k`` sub-domains
  (:func:`~boundflow.verify.search.root_pieces`) that start from the root's bounds and slopes.

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

import os
import pickle
import time
from dataclasses import dataclass

import torch

from boundflow import deadline as deadlines
from boundflow.domains.linear.chain import Chain
from boundflow.verify.search import Outcome, chain_boxes, chain_models, input_search, relu_search, root_pieces

__all__ = ["Piece", "graph_pieces", "pieces", "solve_piece", "search_pieces", "warm_up"]


@dataclass
class Piece:
    """One part of a disjunct's search space, with everything a worker needs."""

    disjunct: int  # index of the disjunct it belongs to
    kind: str  # "input" or "relu" (on a ReLU chain), "graph" (activation splitting on any graph)
    chain: Chain | None  # the network's ReLU chain ("input", "relu")
    lower: torch.Tensor
    upper: torch.Tensor
    start: object  # ("relu") the sub-domain to search (:class:`~boundflow.verify.search.SubDomain`)
    checker: object  # re-runs candidates in onnxruntime (pickled as the model's bytes)
    dj: object  # the disjunct (for the checker); "graph": the disjuncts sharing the box
    threads: int = 1


def input_pieces(chain: Chain, dj, n: int, deadline: float, check) -> Outcome:
    """The serial search's own first rounds until ``n`` boxes are open: ``"open"`` with them in
    ``Outcome.open``, or the search's answer if it finished first (``"unsat"``, ``"sat"``, ...)."""
    bound, margins = chain_boxes(chain, dj.C, dj.d)
    return input_search(bound, margins, dj.lower, dj.upper, check, deadline, stop_open=n)


def pieces(
    chain: Chain, dj, index: int, checker, n: int, input_split_max: int, deadline: float, threads: int = 1
) -> tuple[Outcome, list[Piece]]:
    """The pieces of disjunct ``dj`` (number ``index``) for ``n`` workers, and the outcome of
    cutting it up: ``"open"`` (its ``domains`` were bounded here), or the answer when that
    already settled it (``unsat``: no pieces; ``sat``: a counterexample)."""
    if len(dj.lower) <= input_split_max:
        out = input_pieces(chain, dj, 2 * n, deadline, lambda x: checker.check(x, dj))
        if out.status in ("unsat", "sat"):
            return out, []
        if out.status != "open":  # ran out of time before there was anything to share
            return Outcome("open"), [Piece(index, "input", chain, dj.lower, dj.upper, None, checker, dj, threads)]
        lo, hi = out.open
        # round robin over the queue (worst bounds spread evenly): one batch of boxes per worker
        return out, [Piece(index, "input", chain, lo[w::n], hi[w::n], None, checker, dj, threads) for w in range(n)]
    # the root (alpha-CROWN on every layer) once, here: it often settles the disjunct, and
    # every piece starts from its bounds and slopes instead of recomputing them
    with deadlines.within(deadline):
        status, starts = root_pieces(chain_models(chain), [dj], 2 * n)
    if status == "unsat":
        return Outcome("unsat", domains=1), []
    return Outcome("open", domains=1), [
        Piece(index, "relu", chain, dj.lower, dj.upper, sd, checker, dj, threads) for sd in starts
    ]


def graph_pieces(models, group: list, index: int, checker, n: int, threads: int = 1) -> tuple[Outcome, list[Piece]]:
    """The pieces of the activation-splitting search over the disjuncts ``group`` sharing one
    box, on any graph (``models``: the main process's
    :class:`~boundflow.verify.search.SearchModels`; the workers import the network again from
    the checker's ONNX bytes): the root is bounded here once and cut by
    :func:`~boundflow.verify.search.root_pieces` into ``2^k >= 2 n`` sub-domains."""
    status, starts = root_pieces(models, group, 2 * n)
    if status == "unsat":
        return Outcome("unsat", domains=1), []
    dj = group[0]
    return Outcome("open", domains=1), [
        Piece(index, "graph", None, dj.lower, dj.upper, sd, checker, group, threads) for sd in starts
    ]


_GRAPH_MODELS: dict = {}


def _graph_models(checker):
    """The search models of the network in ``checker``'s ONNX bytes (imported once per worker
    process, as the main process imported it)."""
    import hashlib
    import tempfile
    from pathlib import Path

    from boundflow.onnx import load_onnx
    from boundflow.verify.pipeline import _batched, _Bounder

    key = hashlib.sha256(checker.data).hexdigest()
    if key not in _GRAPH_MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(checker.data)
            module = load_onnx(path)
        _GRAPH_MODELS.clear()
        _GRAPH_MODELS[key] = _Bounder(_batched(module.double().eval())).search_models()
    return _GRAPH_MODELS[key]


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

    if piece.kind == "input":
        bound, margins = chain_boxes(piece.chain, piece.dj.C, piece.dj.d)
        out = input_search(
            bound, margins, piece.lower, piece.upper, lambda x: piece.checker.check(x, piece.dj), deadline
        )
        return piece.disjunct, out.status, out.witness, out.domains
    try:
        with deadlines.within(deadline):
            if piece.kind == "graph":
                models, group = _graph_models(piece.checker), piece.dj
            else:
                models, group = chain_models(piece.chain), [piece.dj]
            st, nb, w = relu_search(models, group, deadline, piece.checker.check, [piece.start])
    except deadlines.DeadlineExceeded:
        st, nb, w = "timeout", 0, None
    return piece.disjunct, st, w, nb


def warm_up(_: object = None) -> int:
    """Run in each worker when the pool starts: pays the imports before the search needs them."""
    import boundflow.verify.search  # noqa: F401

    return os.getpid()


# seconds past the deadline that the workers' answers are waited for (a piece answers
# "timeout" at the deadline by itself; a worker still importing a large network does not)
DEADLINE_GRACE = 0.5


def search_pieces(executor, tasks: list[Piece], wall_deadline: float) -> Outcome:
    """Search every piece on ``executor``; the combined answer (see the module docstring).
    Pieces still running :data:`DEADLINE_GRACE` seconds after the deadline are stopped and
    the answer is ``timeout``."""
    status, domains = "unsat", 0
    tasks_ = [pickle.dumps((p, wall_deadline)) for p in tasks]
    results = executor.imap(solve_piece, tasks_, until=wall_deadline + DEADLINE_GRACE)
    try:
        for _, (_, st, w, nb) in results:
            domains += nb
            if st == "sat":
                return Outcome("sat", w, domains)
            if st != "unsat":
                status = "timeout" if "timeout" in (st, status) else st
    except TimeoutError:
        return Outcome("timeout", domains=domains)
    finally:
        results.close()  # stops the outstanding pieces after a counterexample
    return Outcome(status, domains=domains)
