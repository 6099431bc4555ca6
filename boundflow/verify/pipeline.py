"""Verification of an ONNX model against a VNN-LIB property.

1. Falsification of *every* disjunct first (random points and multi-restart projected
   sign-gradient descent on the worst margin of all rows; every candidate is re-run in
   onnxruntime), so a late ``sat`` disjunct is not found only after earlier ones time out.
2. Per disjunct, branch and bound by the one search driver (:mod:`boundflow.verify.search`):
   input splitting for up to :data:`INPUT_SPLIT_MAX` inputs, activation splitting
   (beta-CROWN, BaBSR/FSB branching, exact MILP leaves) for wider ones, until every leaf is
   proved (:func:`leaf_proved`), a counterexample is confirmed, or the deadline passes.  The
   bounds come from the linear domain: its dense specialisation on ReLU chains
   (:mod:`boundflow.domains.linear.chain_prepared`), the captured graph elsewhere.
3. Before ``unsat``: the imported model is cross-checked against onnxruntime on points of every
   disjunct's box; a mismatch answers ``unknown``.

Answers: ``unsat`` (proved: every leaf box or sub-domain of every disjunct has a margin row
whose sound lower bound is > 0, or a split set contradicting a sound bound by more than
:data:`EMPTY_TOLERANCE`; in exact arithmetic on the float64 evaluation of the network's
weights), ``sat`` (a float32 witness whose onnxruntime output satisfies every unsafe
constraint as written, strict ones strictly; see :class:`_Checker` for the input tolerance),
``timeout``, or ``unknown``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import boundflow as bf
from boundflow import deadline as _deadline
from boundflow.domains.linear import EMPTY_TOLERANCE
from boundflow.errors import BoundFlowError, UnsupportedOperation
from boundflow.onnx import load_onnx, parse_vnnlib
from boundflow.onnx.vnnlib import Disjunct
from boundflow.specs import Box, OutputSpec
from boundflow.verify.search import (
    BETA_ITERATIONS,
    Outcome,
    SearchModels,
    chain_boxes,
    chain_models,
    input_search,
    leaf_proved,
    relu_search,
)
from boundflow.verify.search import joined_status as _joined_status

__all__ = ["Result", "verify", "verify_model", "leaf_proved", "EMPTY_TOLERANCE"]


@dataclass
class Result:
    status: str  # "sat", "unsat", "timeout", "unknown"
    counterexample: np.ndarray | None = None
    output: np.ndarray | None = None
    seconds: float = 0.0
    boxes: int = 0
    notes: list[str] = field(default_factory=list)

    def vnncomp(self) -> str:
        """The VNN-COMP result text (status, and for ``sat`` the witness assignment)."""
        if self.status != "sat":
            return self.status + "\n"
        lines = ["sat", "("]
        lines += [f"(X_{i} {v!r})" for i, v in enumerate(self.counterexample.reshape(-1).tolist())]
        lines += [f"(Y_{i} {v!r})" for i, v in enumerate(self.output.reshape(-1).tolist())]
        return "\n".join(lines) + "\n)\n"


class _Batched(nn.Module):
    """``(N, n_in) -> (N, n_out)`` around an imported module.  ``batchable``: the module takes a
    batch itself; ``vmapped``: it takes one sample (a graph that drops or moves the batch of 1,
    e.g. a reshape to ``(tokens, heads, dim)``) and ``torch.func.vmap`` batches it, which also
    makes the captured graph batch-first wherever vmap's batching rules keep the batch in
    front (the linear domain then applies); otherwise one sample at a time."""

    def __init__(self, module: nn.Module, input_shape: list[int], batchable: bool, vmapped: bool = False):
        super().__init__()
        self.module, self.shape, self.batchable = module, input_shape, batchable
        self.vmapped = vmapped and not batchable

    def vmapped_view(self) -> _Batched | None:
        """The same function batched by vmap (for a module that batches itself but whose graph
        is not batch-first inside, e.g. a transpose that moves the batch of 1 to the back), or
        ``None`` if vmap cannot evaluate it."""
        if self.vmapped or not _vmappable(self.module, self.shape):
            return None
        return _Batched(self.module, self.shape, False, True).eval()

    def _one(self, xi):
        return self.module(xi.reshape(self.shape)).reshape(-1)

    def forward(self, x):
        n = x.shape[0]
        if self.batchable:
            y = self.module(x.reshape(n, *self.shape[1:])).reshape(n, -1)
        elif self.vmapped:
            y = torch.func.vmap(self._one)(x)
        else:
            outs = []
            for i in range(n):  # one sample at a time: the deadline is checked between them
                _deadline.check("evaluation")
                outs.append(self.module(x[i].reshape(self.shape)).reshape(-1))
            y = torch.stack(outs)
        # an integer output (a count of pixels, a class index) is compared as a number, and a
        # float output cast from one (exact) in the input's precision
        return y.to(x.dtype) if x.is_floating_point() else y


def _batchable(module, shape) -> bool:
    if not shape or shape[0] != 1 or len(shape) < 2:
        return False
    x = torch.rand(3, *shape[1:], dtype=torch.float64)
    try:
        with torch.no_grad():
            y = module(x)
            ref = torch.cat([module(x[i : i + 1]) for i in range(3)])
        return y.shape == ref.shape and torch.allclose(y, ref, atol=1e-9)
    except Exception:
        return False


def _float32_in_box(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor | None:
    """A float32 point for candidate ``x``: per coordinate the float32 nearest to ``x`` clipped
    to the box, moved one float32 step inward if rounding left the box.  Where no float32 lies in
    ``[lower, upper]`` (a fixed input that is not a float32 number, or a box narrower than the
    float32 spacing), the nearest float32 to the box, which is within one float32 spacing of it
    (:data:`WITNESS_TOLERANCE` documents this).  ``None`` if that is impossible."""
    xc = torch.minimum(torch.maximum(x.double(), lower), upper)
    xf = xc.to(torch.float32)
    up = torch.nextafter(xf, torch.full_like(xf, float("inf")))
    down = torch.nextafter(xf, torch.full_like(xf, -float("inf")))
    xf = torch.where(xf.double() < lower, up, xf)
    xf = torch.where(xf.double() > upper, down, xf)
    outside = (xf.double() < lower) | (xf.double() > upper)
    if outside.any():
        # no float32 inside for these coordinates: the nearest float32 to the box
        near = lower.to(torch.float32)
        gap = torch.maximum(lower - near.double(), near.double() - upper).clamp(min=0)
        spacing = (torch.nextafter(near, torch.full_like(near, float("inf"))) - near).double()
        if bool((outside & (gap > spacing)).any()):
            return None
        xf = torch.where(outside, near, xf)
    return xf


# A witness coordinate may lie outside the input box only where no float32 number lies inside
# it, and then by at most one float32 spacing of the bound (much less than the 1e-4 that the
# VNN-COMP scorer accepts); its output is always onnxruntime's.
WITNESS_TOLERANCE = "one float32 spacing, only where no float32 lies in the box"


class _Checker:
    """Re-runs candidates in onnxruntime (the network's own precision)."""

    def __init__(self, data: bytes, name: str, shape: tuple):
        import onnxruntime as ort

        self.data, self.name, self.shape = data, name, tuple(shape)
        self.sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        inp = next(i for i in self.sess.get_inputs() if i.name == self.name)
        self.np_dtype = np.float64 if inp.type == "tensor(double)" else np.float32

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self.name: x.reshape(self.shape).astype(self.np_dtype)})[0].reshape(-1)

    def check(self, x: torch.Tensor, dj: Disjunct) -> np.ndarray | None:
        if self.np_dtype == np.float64:
            xf = torch.minimum(torch.maximum(x.detach().double(), dj.lower), dj.upper)
        else:
            xf = _float32_in_box(x.detach(), dj.lower, dj.upper)
            if xf is None:
                return None
        xn = xf.numpy()
        y = self.run(xn)
        if len(dj.C) == 0 or dj.unsafe(y):
            return np.concatenate([xn.reshape(-1).astype(np.float64), y.astype(np.float64)])
        return None

    @classmethod
    def from_path(cls, path: Path, module) -> _Checker:
        import gzip

        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return cls(data, module.input_name, module.input_shape)

    def __reduce__(self):  # sent to worker processes as the model's bytes
        return (_Checker, (self.data, self.name, self.shape))


def _margins(f, x, dj):
    return f(x) @ dj.C.T - dj.d  # (N, rows): unsafe iff all <= 0 (< 0 on strict rows)


class _straight_through:
    """During the attacks' gradient steps, step functions of an imported model (``Sign``,
    ``Floor``, ``Ceil``, ``Round``) pass gradients as the identity (straight-through): a
    binarised network has zero gradients otherwise.  Values are unchanged up to rounding, and
    every candidate is re-run in onnxruntime anyway."""

    def __init__(self, f):
        self.module = getattr(f, "module", None)

    def __enter__(self):
        if self.module is not None and hasattr(self.module, "straight_through"):
            self.module.straight_through = True
        return self

    def __exit__(self, *exc):
        if self.module is not None and hasattr(self.module, "straight_through"):
            self.module.straight_through = False
        return False


def _falsify(f, group, checker: _Checker, deadline: float, n_random: int = 1024, restarts: int = 16, steps: int = 60):
    """Random points, then projected sign-gradient descent from ``restarts`` starts (the best
    random points and fresh random ones) on the worst margin: for one disjunct the largest of its
    rows (unsafe iff every row is <= 0); for a ``group`` of disjuncts over the same box the
    smallest of those over the disjuncts (unsafe iff some disjunct is), so a classification
    property's disjuncts are attacked together.  Every candidate with a non-positive worst
    margin is confirmed in onnxruntime against the disjunct it violates."""
    group = [group] if isinstance(group, Disjunct) else list(group)
    lo, hi = group[0].lower, group[0].upper
    C = torch.cat([dj.C for dj in group]).to(torch.float64)
    d = torch.cat([dj.d for dj in group]).to(torch.float64)
    sizes = [len(dj.d) for dj in group]

    def worst(x):
        parts = torch.split(f(x) @ C.T - d, sizes, 1)
        per = torch.stack([p.amax(1) for p in parts], 1)  # (N, disjuncts)
        return per.amin(1), per.argmin(1)

    def confirm(x, k):
        return checker.check(x, group[int(k)])

    g = torch.Generator().manual_seed(0)
    pts = torch.cat(
        [
            ((lo + hi) / 2)[None],
            lo[None],
            hi[None],
            lo + (hi - lo) * torch.rand(n_random, len(lo), generator=g, dtype=torch.float64),
        ]
    )
    vals, which = [], []
    with torch.no_grad():  # in chunks, the deadline checked between them (wide inputs are costly)
        for s in range(0, len(pts), 128):
            if time.monotonic() > deadline:
                return None
            v, k = worst(pts[s : s + 128])
            vals.append(v)
            which.append(k)
    val, which = torch.cat(vals), torch.cat(which)
    order = val.argsort()
    for i in order[:8].tolist():
        if val[i] <= 0:
            w = confirm(pts[i], which[i])
            if w is not None:
                return w
    half = restarts // 2
    z = torch.cat(
        [pts[order[:half]], lo + (hi - lo) * torch.rand(restarts - half, len(lo), generator=g, dtype=torch.float64)]
    )
    step = (hi - lo) / 8
    for k in range(steps):
        if time.monotonic() > deadline:
            return None
        z.requires_grad_(True)
        with _straight_through(f):  # step functions pass gradients as the identity
            obj = worst(z)[0].sum()
            (grad,) = torch.autograd.grad(obj, z)
        with torch.no_grad():
            z = torch.minimum(torch.maximum(z - step * grad.sign(), lo), hi)
            mz, kz = worst(z)
            for i in torch.nonzero(mz <= 0).reshape(-1).tolist():
                w = confirm(z[i], kz[i])
                if w is not None:
                    return w
        step = step * (0.5 if k == steps // 2 else 0.95)
    return None


class _Bounder:
    """Margin lower bounds for batches of boxes through the prepared-model interface (graphs
    are captured once per padded batch size by :class:`~boundflow.domains.linear.domain.LinearPrepared`).
    The deadline travels with each query (:func:`boundflow.deadline.within`, set by
    :func:`verify_model`): alpha- and beta-CROWN stop their iterations there, the other loops
    raise."""

    def __init__(self, f: nn.Module):
        beta = f"alpha-crown:iters={BETA_ITERATIONS}:sides=lower"
        methods = {
            "ibp": "ibp",
            "crown": "crown",
            "alpha-crown": "alpha-crown",
            # beta-CROWN on branch and bound's sub-domains: only the margins' lower bounds count
            "beta-crown": beta,
            # the search's root: every ReLU input's bounds optimised first (the sub-domains
            # inherit them)
            "beta-crown-root": f"{beta}:intermediate={ROOT_INTERMEDIATE_ITERATIONS}:share={ROOT_INTERMEDIATE_SHARE!r}",
        }
        self.models = {key: bf.get_domain(name).prepare(f) for key, name in methods.items()}

    def __call__(self, lo, hi, C, d, method: str) -> torch.Tensor:
        return self.models[method].bounds(Box(lo, hi), OutputSpec(C, d)).lower

    def search_models(self) -> SearchModels:
        """What :func:`~boundflow.verify.search.relu_search` queries on this graph."""
        root = self.models["beta-crown-root" if ROOT_INTERMEDIATE_ITERATIONS else "beta-crown"]
        return SearchModels(root, self.models["beta-crown"], batch=32)


def _split_scores(f, blo, bhi, m, dj) -> torch.Tensor:
    """Per box and input dimension ``width * |d margin / d x|`` for the margin row closest to
    being proved (largest lower bound), at the box centre."""
    centres = ((blo + bhi) / 2).requires_grad_(True)
    best = m.argmax(1)
    margins = _margins(f, centres, dj)
    sel = margins.gather(1, best[:, None]).sum()
    (grad,) = torch.autograd.grad(sel, centres)
    return grad.abs() * (bhi - blo)


def _vmappable(module, shape) -> bool:
    """Whether ``torch.func.vmap`` evaluates ``module`` on a batch as it does sample by sample
    (its ops have batching rules; same values)."""
    x = torch.rand(3, int(np.prod(shape)), dtype=torch.float64)
    try:
        with torch.no_grad():
            y = torch.func.vmap(lambda xi: module(xi.reshape(shape)).reshape(-1))(x)
            ref = torch.stack([module(x[i].reshape(shape)).reshape(-1) for i in range(3)])
        return y.shape == ref.shape and torch.allclose(y, ref, atol=1e-9)
    except Exception:
        return False


def _batched(module) -> _Batched:
    """The verifier's ``(N, n_in) -> (N, n_out)`` view of an imported module (batched by the
    module itself, else by vmap, else one sample at a time)."""
    shape = module.input_shape
    if _batchable(module, shape):
        return _Batched(module, shape, True).eval()
    return _Batched(module, shape, False, _vmappable(module, shape)).eval()


def _verify_disjunct(f, dj: Disjunct, checker: _Checker, deadline: float, chain=None, executor=None):
    """Bound one disjunct (falsification already ran); ``(status, witness, boxes)``.  Up to
    :data:`INPUT_SPLIT_MAX` inputs: the one input-splitting search
    (:func:`~boundflow.verify.search.input_search`); more: the root box's bounds, then the one
    activation-splitting search (:func:`~boundflow.verify.search.relu_search`).  On ReLU
    chains both query the linear domain's dense specialisation."""
    if len(dj.C) == 0:  # no output constraint: every input is unsafe
        w = checker.check((dj.lower + dj.upper) / 2, dj)
        return ("sat", w, 0) if w is not None else ("unknown", None, 0)
    wide = len(dj.lower) > INPUT_SPLIT_MAX
    if chain is not None and wide:
        st, nb, w = relu_search(chain_models(chain), [dj], deadline, checker.check)
        return st, w, nb
    if chain is not None:
        bound, margins = chain_boxes(chain, dj.C, dj.d)
        out = input_search(bound, margins, dj.lower, dj.upper, lambda x: checker.check(x, dj), deadline)
        return out.status, out.witness, out.domains
    boxes = _GraphBoxes(f, dj)
    if not wide:
        out = input_search(boxes, boxes.margins, dj.lower, dj.upper, lambda x: checker.check(x, dj), deadline,
                           candidates=1)  # fmt: skip
        return out.status, out.witness, out.domains
    # wide inputs on a general graph: the root box, then activation splitting
    root = boxes(dj.lower[None], dj.upper[None], None)
    if bool(root.proved[0]):
        return "unsat", None, 1
    w = checker.check((dj.lower + dj.upper) / 2, dj) if bool(boxes.margins(root.points[0]).amax(1)[0] <= 0) else None
    if w is not None:
        return "sat", w, 1
    if not boxes.linear:
        return "unknown", None, 1
    st, nb, w = _activation_search(boxes.bounder, [dj], checker, deadline, executor)
    return st, w, 1 + nb


def _activation_search(bounder, group: list[Disjunct], checker: _Checker, deadline: float, executor=None):
    """The one activation-splitting search over ``group`` on a general graph: in this process,
    or (an executor with more than one worker) cut into pieces searched by its workers
    (:func:`boundflow.verify.parallel.graph_pieces`).  ``(status, sub-domains, witness)``."""
    if executor is None or executor.workers <= 1:
        return relu_search(bounder.search_models(), group, deadline, checker.check)
    import os

    from boundflow.verify.parallel import graph_pieces, search_pieces

    threads = max(1, (os.cpu_count() or 1) // executor.workers)
    cut, tasks = graph_pieces(bounder.search_models(), group, 0, checker, executor.workers, threads)
    if not tasks:
        return cut.status, cut.domains, cut.witness
    out = search_pieces(executor, tasks, time.time() + (deadline - time.monotonic()))
    return out.status, out.domains + cut.domains, out.witness


class _GraphBoxes:
    """``bound`` and ``margins`` for :func:`~boundflow.verify.search.input_search` on a general
    graph: CROWN on every box (alpha-CROWN on the open ones of a batch of at most 8), or
    intervals where the linear domain does not take the graph (a graph that is not batch-first
    inside: first the vmapped view's graph is tried); dimension scores ``width * |d margin /
    d x|`` for the best row at the box centre (relative width with intervals only)."""

    def __init__(self, f, dj: Disjunct):
        self.f, self.dj = f, dj
        # the linear domain needs batch-first graphs (a vmapped one may still have a node that
        # is not: the bounder then falls back to intervals); otherwise intervals only
        self.linear = f.batchable or f.vmapped
        self.bounder = _Bounder(f)
        self.width0 = (dj.upper - dj.lower).clamp(min=1e-12)

    def margins(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _margins(self.f, x, self.dj)

    def _crown(self, lo, hi) -> torch.Tensor:
        dj = self.dj
        try:
            return self.bounder(lo, hi, dj.C, dj.d, "crown" if self.linear else "ibp")
        except UnsupportedOperation:
            if not self.linear:
                raise
        alt = self.f.vmapped_view()
        if alt is not None:
            self.bounder = _Bounder(alt)
            try:
                return self.bounder(lo, hi, dj.C, dj.d, "crown")
            except UnsupportedOperation:
                pass
        self.linear = False
        return self.bounder(lo, hi, dj.C, dj.d, "ibp")

    def __call__(self, lo, hi, floor):
        from boundflow.domains.linear.chain_prepared import BoxBounds

        dj = self.dj
        m = self._crown(lo, hi)
        if floor is not None:
            m = torch.maximum(m, floor.to(m.dtype))
        open_ = ~leaf_proved(m)
        if self.linear and open_.any() and len(lo) <= 8:
            idx = torch.nonzero(open_).reshape(-1)
            m[idx] = torch.maximum(m[idx], self.bounder(lo[idx], hi[idx], dj.C, dj.d, "alpha-crown"))
            open_ = ~leaf_proved(m)
        width = hi - lo
        if self.linear:
            score = torch.zeros_like(lo)
            if open_.any():
                idx = torch.nonzero(open_).reshape(-1)
                score[idx] = _split_scores(self.f, lo[idx], hi[idx], m[idx], dj)
        else:
            score = width / self.width0
        score = torch.where(width > 0, score + 1e-12 * width, -1.0)
        return BoxBounds(m, ~open_, score, ((lo + hi) / 2)[:, None, :])


# the share of the time left that the attacks before bounding may take (they run again on
# open sub-domains inside the search)
ATTACK_SHARE = 0.3

# inputs up to this many are split as boxes; wider inputs are split on ReLUs
INPUT_SPLIT_MAX = 64

# alpha-CROWN iterations on every ReLU input's bounds at the ReLU search's root (0: CROWN's),
# within this share of the time left
ROOT_INTERMEDIATE_ITERATIONS = 10
ROOT_INTERMEDIATE_SHARE = 0.25


def _cross_check(f, checker: _Checker, disjuncts: list[Disjunct], n: int = 8, seed: int = 0) -> str | None:
    """Compare the imported model with onnxruntime on the box centres, corners and random
    points of every disjunct; a message if they differ by more than float32 evaluation error."""
    g = torch.Generator().manual_seed(seed)
    for k, dj in enumerate(disjuncts):
        lo, hi = dj.lower, dj.upper
        pts = [(lo + hi) / 2, lo, hi] + [
            lo + (hi - lo) * torch.rand(len(lo), generator=g, dtype=torch.float64) for _ in range(n)
        ]
        for x in pts:
            xf = x.to(torch.float32).double() if checker.np_dtype == np.float32 else x
            ref = checker.run(xf.numpy()).astype(np.float64)
            with torch.no_grad():
                out = f(xf[None]).reshape(-1).numpy()
            tol = 1e-4 * (1 + np.abs(ref).max())
            if out.shape != ref.shape or np.abs(out - ref).max() > tol:
                diff = np.abs(out - ref).max() if out.shape == ref.shape else float("nan")
                return f"imported model differs from onnxruntime by {diff:.3g} on disjunct {k} (tolerance {tol:.3g})"
    return None


def verify_model(
    module,
    onnx_path: Path,
    disjuncts: list[Disjunct],
    timeout: float,
    start: float | None = None,
    executor=None,
) -> Result:
    """Verify ``disjuncts`` on an imported ``module``; the deadline is ``start + timeout``
    (``start``: a ``time.monotonic()`` reading, by default now).  ``executor``: a
    :mod:`solvers.executor` executor with more than one worker spreads the branch and bound of
    ReLU chains, and the activation-splitting search of other graphs, over its workers
    (:mod:`boundflow.verify.parallel`); ``None``: this process."""
    from boundflow.verify import search

    start = time.monotonic() if start is None else start
    search.count_from_zero()
    try:
        with _deadline.within(start + timeout):
            return _verify_model(module, onnx_path, disjuncts, timeout, start, executor)
    except _deadline.DeadlineExceeded as e:
        return Result("timeout", seconds=time.monotonic() - start, boxes=search.bounded_so_far(), notes=[str(e)])
    except MemoryError as e:
        return Result("unknown", seconds=time.monotonic() - start, notes=[f"out of memory: {e}"])
    except UnsupportedOperation as e:  # found while bounding (the inputs were valid): no answer
        return Result("unknown", seconds=time.monotonic() - start, notes=[f"unsupported: {str(e)[:300]}"])
    except BoundFlowError:
        raise
    except RuntimeError as e:  # torch reports a failed allocation as a RuntimeError
        if "alloc" in str(e).lower() or "memory" in str(e).lower():
            note = f"out of memory: {str(e)[:200]}"
        else:  # never a traceback instead of an answer: unknown, with what went wrong
            note = f"internal error ({type(e).__name__}): {str(e)[:300]}"
        return Result("unknown", seconds=time.monotonic() - start, notes=[note])


def _verify_model(module, onnx_path, disjuncts, timeout, start, executor) -> Result:
    deadline = start + timeout
    parallel = executor is not None and executor.workers > 1
    if parallel:
        from boundflow.verify.parallel import warm_up

        executor.warm(warm_up, None)  # the workers import while the attacks run
    module = module.double().eval()
    f = _batched(module)
    checker = _Checker.from_path(onnx_path, module)

    def answer(status, boxes=0, w=None, n_in=0, notes=None):
        if status in ("sat", "unsat") and time.monotonic() > deadline:
            status = "timeout"  # a late answer counts as a timeout
        if status == "sat":
            return Result("sat", w[:n_in], w[n_in:], time.monotonic() - start, boxes, notes or [])
        return Result(status, seconds=time.monotonic() - start, boxes=boxes, notes=notes or [])

    if getattr(module, "index_inputs", ()):  # piecewise in its index inputs: case by case
        return _verify_index_cases(module, disjuncts, checker, deadline, answer)
    # the attacks get at most ATTACK_SHARE of the time left, shared by the disjuncts
    attack_end = time.monotonic() + ATTACK_SHARE * max(0.0, deadline - time.monotonic())
    for dj in disjuncts:  # a disjunct without output constraint: every input is unsafe
        if not len(dj.C):
            w = checker.check((dj.lower + dj.upper) / 2, dj)
            if w is not None:
                return answer("sat", 0, w, len(dj.lower))
    groups: dict = {}  # disjuncts over the same box are attacked together
    for dj in disjuncts:
        if len(dj.C):
            groups.setdefault((dj.lower.numpy().tobytes(), dj.upper.numpy().tobytes()), []).append(dj)
    for k, group in enumerate(groups.values()):  # attack every disjunct before bounding any
        if time.monotonic() > deadline:
            return answer("timeout")
        until = time.monotonic() + (attack_end - time.monotonic()) / (len(groups) - k)
        w = _falsify(f, group, checker, until)
        if w is not None:
            return answer("sat", 0, w, len(group[0].lower))
    # graph capture's first call imports torch's compiler stack (~1 s, not interruptible): pay it
    # here, after the attacks and where the deadline is checked next, rather than in the middle
    # of branch and bound
    import torch._dynamo  # noqa: F401

    if time.monotonic() > deadline:
        return answer("timeout")
    from boundflow.domains.linear.chain import extract_chain

    chain = extract_chain(f, int(np.prod(module.input_shape))) if f.batchable else None
    status, boxes = "unsat", 0
    if parallel and chain is not None:
        out = _verify_parallel(chain, disjuncts, checker, deadline, executor)
        if out.status == "sat":
            return answer("sat", out.domains, out.witness, len(disjuncts[0].lower))
        status, boxes = out.status, out.domains
        disjuncts_left = []
    else:
        disjuncts_left = disjuncts
    pool = executor if parallel and chain is None else None  # general graphs: activation search pieces
    work = _shared_boxes(disjuncts_left, chain)
    while work:
        group = work.pop(0)
        if len(group) == 1:
            st, w, nb = _verify_disjunct(f, group[0], checker, deadline, chain=chain, executor=pool)
        elif chain is None:
            out = _verify_wide_group(f, group, checker, deadline, executor=pool)
            if out is None:  # the linear domain does not take the graph: one disjunct at a time
                work[:0] = [[g] for g in group]
                continue
            st, w, nb = out
        else:  # (a witness is one that onnxruntime confirmed for one of the group's disjuncts)
            st, w, nb = _verify_group(chain, group, checker, deadline)
        boxes += nb
        if st == "sat":
            return answer("sat", boxes, w, len(group[0].lower))
        status = _joined_status(status, st)
        if st == "timeout":
            break
    if status == "unsat":
        problem = _cross_check(f, checker, disjuncts)
        if problem is not None:
            return answer("unknown", boxes, notes=[problem])
    return answer(status, boxes)


def _shared_boxes(disjuncts: list[Disjunct], chain) -> list[list[Disjunct]]:
    """Single-row disjuncts over the same input box, grouped (first-seen order), for one search:
    on ReLU chains with few inputs (:func:`_verify_group`), and on other graphs with wide inputs
    (:func:`_verify_wide_group`); every other disjunct alone."""
    groups: dict = {}
    for k, dj in enumerate(disjuncts):
        wide = len(dj.lower) > INPUT_SPLIT_MAX
        few = len(dj.C) == 1 and (wide if chain is None else not wide)
        key = (dj.lower.numpy().tobytes(), dj.upper.numpy().tobytes()) if few else ("alone", k)
        groups.setdefault(key, []).append(dj)
    return list(groups.values())


def _verify_group(chain, group: list[Disjunct], checker: _Checker, deadline: float):
    """One input-splitting search for single-row disjuncts sharing a box: a sub-box is done
    when every disjunct's row is proved on it (the layer bounds are computed once for all)."""
    C = torch.cat([dj.C for dj in group]).to(torch.float64)
    d = torch.cat([dj.d for dj in group]).to(torch.float64)
    bound, margins = chain_boxes(chain, C, d, every=True)

    def check(x):
        m = margins(x[None])[0]
        for k in torch.nonzero(m <= 0).reshape(-1).tolist():  # the disjuncts this point may violate
            w = checker.check(x, group[k])
            if w is not None:
                return w
        return None

    out = input_search(bound, margins, group[0].lower, group[0].upper, check, deadline, every=True)
    return out.status, out.witness, out.domains


def _verify_wide_group(f, group: list[Disjunct], checker: _Checker, deadline: float, executor=None):
    """Single-row disjuncts sharing a wide input box on a general graph: their rows bounded
    together (CROWN, then alpha-CROWN); the disjuncts not proved there searched together by
    :func:`~boundflow.verify.search.relu_search`.  ``None`` where the linear domain does not
    take the graph (the caller then searches one disjunct at a time)."""
    dj = group[0]
    C, d = torch.cat([g.C for g in group]), torch.cat([g.d for g in group])
    bounder = _Bounder(f)
    lo, hi = dj.lower[None], dj.upper[None]
    if not f.batchable:
        return None
    try:
        m = bounder(lo, hi, C, d, "crown")
        if not bool((m > 0).all()):
            m = torch.maximum(m, bounder(lo, hi, C, d, "alpha-crown"))
    except UnsupportedOperation:
        return None
    left = [g for k, g in enumerate(group) if not bool(m[0, k] > 0)]
    if not left:
        return "unsat", None, 1
    centre = (dj.lower + dj.upper) / 2
    for g in left:
        w = checker.check(centre, g)
        if w is not None:
            return "sat", w, 1
    st, nb, w = _activation_search(bounder, left, checker, deadline, executor)
    return st, w, 1 + nb


def _verify_parallel(chain, disjuncts: list[Disjunct], checker: _Checker, deadline: float, executor):
    """Every disjunct's pieces searched on ``executor`` (falsification already ran)."""
    import os

    from boundflow.verify.parallel import pieces, search_pieces

    n = executor.workers
    threads = max(1, (os.cpu_count() or 1) // n)
    tasks, done = [], 0
    for k, dj in enumerate(disjuncts):
        if len(dj.C) == 0:  # no output constraint: every input is unsafe
            w = checker.check((dj.lower + dj.upper) / 2, dj)
            if w is not None:
                return Outcome("sat", w, 0)
            return Outcome("unknown")
        cut, more = pieces(chain, dj, k, checker, n, INPUT_SPLIT_MAX, deadline, threads)
        if cut.status == "sat":
            return cut
        done += cut.domains
        tasks += more
        if time.monotonic() > deadline:
            return Outcome("timeout")
    if not tasks:
        return Outcome("unsat", domains=done)
    out = search_pieces(executor, tasks, time.time() + (deadline - time.monotonic()))
    out.domains += done
    return out


def _n_outputs(module) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(module.input_shape, dtype=torch.float64)).numel())


# points tried per disjunct by the onnxruntime-only search, and the most integer points of
# the varying coordinates it enumerates (inputs cast to integers, e.g. a patch position)
ORT_SAMPLES = 4096
ORT_GRID_MAX = 20000


def _ort_candidates(dj: Disjunct, rng: np.random.Generator):
    """Points of the box of ``dj``, in the order tried: its centre and two corners, then every
    integer point of the varying coordinates when there are few (``ORT_GRID_MAX``; other
    coordinates at the centre), then uniform random points; batches of at most 256."""
    lo, hi = dj.lower.numpy(), dj.upper.numpy()
    mid = (lo + hi) / 2
    yield np.stack([mid, lo, hi])
    vary = np.nonzero(hi > lo)[0]
    if 0 < len(vary) <= 4:
        ranges = [np.arange(np.ceil(lo[i]), np.floor(hi[i]) + 1) for i in vary]
        if 0 < int(np.prod([len(r) for r in ranges])) <= ORT_GRID_MAX:
            grid = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, len(vary))
            for k in range(0, len(grid), 256):
                pts = np.repeat(mid[None], len(grid[k : k + 256]), 0)
                pts[:, vary] = grid[k : k + 256]
                yield pts
    for _ in range(0, ORT_SAMPLES, 256):
        yield lo + (hi - lo) * rng.random((256, len(lo)))


def _verify_index_cases(module, disjuncts, checker, deadline, answer) -> Result:
    """Every disjunct case by case (:mod:`boundflow.verify.cases`); ``unsat`` when every
    disjunct's every case is proved."""
    from boundflow.verify.cases import verify_cases

    status, boxes = "unsat", 0
    for dj in disjuncts:
        if not len(dj.C):
            continue  # (answered before the attacks)
        st, w, nb = verify_cases(module, dj, checker, deadline, ATTACK_SHARE)
        boxes += nb
        if st == "sat":
            return answer("sat", boxes, w, len(dj.lower))
        status = _joined_status(status, st)
        if st == "timeout":
            break
    return answer(status, boxes)


def _check_property(disjuncts: list[Disjunct], n_in: int, vnnlib_path, onnx_path) -> None:
    """A property the network can be checked against: at least one disjunct, each over the
    network's ``n_in`` inputs (a one-line :class:`VnnlibError` otherwise)."""
    from boundflow.onnx.vnnlib import VnnlibError

    for dj in disjuncts:
        if len(dj.lower) != n_in:
            raise VnnlibError(f"{vnnlib_path}: property has {len(dj.lower)} inputs but {onnx_path} takes {n_in}")
    if not disjuncts:
        raise VnnlibError(f"{vnnlib_path}: the property has no disjunct")


def _falsify_unimported(onnx_path: Path, vnnlib_path, timeout: float, start: float, error) -> Result:
    """``sat`` with an onnxruntime-checked witness, or ``unknown`` (naming why the model did
    not import), for a network no bound domain can read: centre, corners, integer points of few
    varying coordinates and random points of every disjunct's box, in onnxruntime, until the
    deadline."""
    import gzip

    import onnxruntime as ort

    deadline = start + timeout
    data = gzip.decompress(onnx_path.read_bytes()) if onnx_path.suffix == ".gz" else onnx_path.read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    n_in = int(np.prod(shape))
    np_dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    y0 = sess.run(None, {inp.name: np.zeros(shape, np_dtype)})[0]
    disjuncts = parse_vnnlib(vnnlib_path, n_inputs=None, n_outputs=int(y0.size))
    note = f"the model did not import ({error}); searched for a counterexample in onnxruntime only"
    checker = _Checker(data, inp.name, shape)
    rng = np.random.default_rng(0)
    _check_property(disjuncts, n_in, vnnlib_path, onnx_path)
    for dj in disjuncts:
        for pts in _ort_candidates(dj, rng):
            for x in pts:
                if time.monotonic() > deadline - 0.5:
                    return Result("timeout", seconds=time.monotonic() - start, notes=[note])
                w = checker.check(torch.from_numpy(x), dj)
                if w is not None:
                    return Result("sat", w[:n_in], w[n_in:], time.monotonic() - start, notes=[note])
    return Result("unknown", seconds=time.monotonic() - start, notes=[note])


def verify(
    onnx_path: str | Path,
    vnnlib_path: str | Path,
    timeout: float = 60.0,
    start: float | None = None,
    executor=None,
) -> Result:
    """Verify the property in ``vnnlib_path`` on the network in ``onnx_path`` (see the module
    docstring for what each answer guarantees).  Returns within about ``timeout`` seconds of
    ``start`` (a ``time.monotonic()`` reading; default: the call), model import included;
    malformed inputs raise a :class:`boundflow.errors.BoundFlowError` naming the file.
    ``executor``: parallel branch and bound on a :func:`solvers.executor.make_executor`
    executor (the verdict is the serial one's whenever both finish)."""
    start = time.monotonic() if start is None else start
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    onnx_path = Path(onnx_path)
    try:
        module = load_onnx(onnx_path).double()
    except UnsupportedOperation as e:
        # no bound domain can run; a counterexample can still be found and re-checked in
        # onnxruntime alone (``unsat`` is never answered without the imported model)
        return _falsify_unimported(onnx_path, vnnlib_path, timeout, start, e)
    n_in = int(np.prod(module.input_shape))
    disjuncts = parse_vnnlib(vnnlib_path, n_inputs=None, n_outputs=_n_outputs(module))
    _check_property(disjuncts, n_in, vnnlib_path, onnx_path)
    if time.monotonic() > start + timeout:
        return Result("timeout", seconds=time.monotonic() - start)
    return verify_model(module, onnx_path, disjuncts, timeout, start, executor)
