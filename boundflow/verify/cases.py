"""Models that read input elements as indices: bounds and verdicts case by case.

An imported model whose graph reads some input elements only through a ``Cast`` to an integer
(:attr:`boundflow.onnx.OnnxModule.index_inputs`; e.g. ``cctsdb_yolo``'s patch position, which
starts a ``Slice`` and indexes a ``ScatterND``) is piecewise: on the inputs where those elements
have the same integer parts it is one model, :meth:`~boundflow.onnx.OnnxModule.pin`'s, whose
graph the domains capture.  A box allows finitely many such cases (the integer parts of each
index element's range, rounding toward zero as ``Cast`` does), so:

* :func:`cases` lists them, each with its sub-box (the index elements set to a value inside the
  box with that integer part) and its pins;
* :func:`case_bounds` bounds the outputs over the box as the union of the cases' bounds: the
  model's value where a case's box is a point (every other input fixed), the domain's bounds on
  the pinned model otherwise;
* :func:`verify_cases` decides a property case by case: ``sat`` with a point onnxruntime
  confirms, ``unsat`` only when every case is proved.

More than ``max_cases`` cases (default :data:`MAX_CASES`) is refused with
:class:`~boundflow.errors.UnsupportedOperation` before any case is bounded."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator

import torch

from boundflow import deadline as _deadline
from boundflow.errors import UnsupportedOperation

__all__ = ["MAX_CASES", "cases", "case_bounds", "verify_cases"]

MAX_CASES = 4096


def _integer_parts(lo: float, hi: float) -> list[tuple[int, float]]:
    """``(k, v)`` for every integer ``k = trunc(x)`` with ``lo <= x <= hi``; ``v`` is such an ``x``
    (``trunc`` is monotone, so the ``k`` are the integers from ``trunc(lo)`` to ``trunc(hi)``)."""
    return [(k, min(max(float(k), lo), hi)) for k in range(math.trunc(lo), math.trunc(hi) + 1)]


def _ranges(module, lower: torch.Tensor, upper: torch.Tensor, max_cases: int) -> list[list[tuple[int, float]]]:
    """Per index input, :func:`_integer_parts` of its range; refuses an unbounded range or more
    than ``max_cases`` combinations (before any case is made)."""
    ranges = []
    for p in module.index_inputs:
        lo, hi = float(lower[p]), float(upper[p])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise UnsupportedOperation(f"{module.path}: index input {p} has an unbounded range [{lo}, {hi}]")
        ranges.append(_integer_parts(lo, hi))
    count = math.prod(len(r) for r in ranges)
    if count > max_cases:
        raise UnsupportedOperation(
            f"{module.path}: the box allows {count} combinations of the index inputs {list(module.index_inputs)} "
            f"(more than {max_cases} cases)"
        )
    return ranges


def cases(
    module, lower: torch.Tensor, upper: torch.Tensor, max_cases: int = MAX_CASES
) -> Iterator[tuple[dict[int, float], torch.Tensor, torch.Tensor]]:
    """Every case of the box ``[lower, upper]`` (flat, one sample) for ``module``'s index inputs:
    ``(pins, case_lower, case_upper)``, made one at a time.  The case boxes cover every input of
    the box whose index elements take those integer parts; on a case's box ``module`` equals
    ``module.pin(pins)``."""
    positions = list(module.index_inputs)
    for combo in itertools.product(*_ranges(module, lower, upper, max_cases)):
        lo, hi = lower.clone(), upper.clone()
        for p, (_, v) in zip(positions, combo, strict=True):
            lo[p] = hi[p] = v
        yield {p: float(k) for p, (k, _) in zip(positions, combo, strict=True)}, lo, hi


def case_bounds(
    module,
    lower: torch.Tensor,
    upper: torch.Tensor,
    method: str = "crown",
    C: torch.Tensor | None = None,
    max_cases: int = MAX_CASES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on the outputs (or on ``C @ y`` for ``C`` of shape ``(S, n_out)``) of ``module``
    (an imported model with index inputs) over each box row of ``lower``/``upper`` (shape
    ``(B, n_in)``): per case the model's value where the case's box is a point, else
    ``compute_bounds(method)`` on the pinned model; the union over the cases.  Sound as the
    method is (a point's value is the model's float64 evaluation).  The deadline
    (:mod:`boundflow.deadline`) is checked between cases."""
    from boundflow.api import compute_bounds
    from boundflow.verify.pipeline import _batched

    f = _batched(module)
    lbs, ubs = [], []
    for b in range(lower.shape[0]):
        lb = ub = None
        for pins, lo, hi in cases(module, lower[b], upper[b], max_cases):
            _deadline.check("index cases")
            if torch.equal(lo, hi):
                with torch.no_grad():
                    y = f(lo[None].to(lower.dtype))
                low = high = y @ C.T.to(y.dtype) if C is not None else y
            else:
                low, high = compute_bounds(_batched(module.pin(pins)), lo[None], hi[None], method=method, C=C)
            lb = low if lb is None else torch.minimum(lb, low)
            ub = high if ub is None else torch.maximum(ub, high)
        lbs.append(lb)
        ubs.append(ub)
    return torch.cat(lbs), torch.cat(ubs)


def verify_cases(module, dj, checker, deadline: float, attack_share: float = 0.3) -> tuple[str, object, int]:
    """Decide disjunct ``dj`` on ``module`` (with index inputs) case by case: ``("sat", witness,
    n)`` with a point onnxruntime confirms, ``("unsat", None, n)`` when every case is proved (a
    point case by a margin row of the model's float64 value > 0, after onnxruntime found it
    safe too; any other by the verifier's search on the pinned model), else ``unknown`` or
    ``timeout``.  Counterexamples first: every point case in onnxruntime, then attacks on the
    other cases (``attack_share`` of the time left), then the proofs."""
    from boundflow.onnx.vnnlib import Disjunct
    from boundflow.verify.pipeline import _batched, _falsify, _joined_status, _margins, _verify_disjunct, leaf_proved

    # the cases are made one at a time (each holds two copies of the input box); whether they
    # are points depends only on the other inputs, so on all of them alike
    n_cases = math.prod(len(r) for r in _ranges(module, dj.lower, dj.upper, MAX_CASES))
    others = torch.ones_like(dj.lower, dtype=torch.bool)
    others[list(module.index_inputs)] = False
    points = torch.equal(dj.lower[others], dj.upper[others])

    def sub(lo, hi):
        return Disjunct(lo, hi, dj.C, dj.d, dj.strict)

    if points:  # onnxruntime alone: cheap, and the judge of a counterexample
        for _, lo, hi in cases(module, dj.lower, dj.upper):
            if time.monotonic() > deadline:
                return "timeout", None, 0
            w = checker.check(lo, sub(lo, hi))
            if w is not None:
                return "sat", w, 0
    else:
        attack_end = time.monotonic() + attack_share * max(0.0, deadline - time.monotonic())
        for k, (pins, lo, hi) in enumerate(cases(module, dj.lower, dj.upper)):
            until = time.monotonic() + (attack_end - time.monotonic()) / (n_cases - k)
            w = _falsify(_batched(module.pin(pins)), [sub(lo, hi)], checker, min(until, deadline))
            if w is not None:
                return "sat", w, 0
    f = _batched(module)
    status, n = "unsat", 0
    for pins, lo, hi in cases(module, dj.lower, dj.upper):
        if points:
            if time.monotonic() > deadline:
                return "timeout", None, n
            n += 1
            with torch.no_grad():
                if not bool(leaf_proved(_margins(f, lo[None], dj))[0]):
                    status = "unknown"  # onnxruntime found it safe, the float64 model does not
            continue
        st, w, nb = _verify_disjunct(_batched(module.pin(pins)), sub(lo, hi), checker, deadline)
        n += nb
        if st == "sat":  # (a witness the attacks missed; onnxruntime confirmed it)
            return "sat", w, n
        status = _joined_status(status, st)
        if st == "timeout":
            return "timeout", None, n
    return status, None, n
