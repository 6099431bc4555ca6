"""Certified predictions from a parameter box."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from boundflow.domains.interval import IntervalTensor
from boundflow.specs import Box

__all__ = [
    "Certification",
    "ErrorBounds",
    "PredictionRange",
    "certify",
    "error_bounds",
    "logit_bounds",
    "prediction_range",
]


@dataclass
class Certification:
    """``classes``: per sample the certified class, or -1 (abstain); ``accuracy``: fraction of
    samples certified *and* correct (None without labels); ``certified``: fraction certified."""

    classes: torch.Tensor
    accuracy: float | None
    certified: float


def logit_bounds(
    model: nn.Module,
    lower: Mapping[str, torch.Tensor],
    upper: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    eps: float = 0.0,
    method: str = "ibp",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output bounds for every parameter vector in the box and every input within ``eps``, from
    the domain ``method`` (through :func:`boundflow.prepare`, in ``x``'s dtype)."""
    from boundflow.api import prepare

    params = {n: IntervalTensor(lower[n], upper[n]) for n in lower}
    res = prepare(model, method, params, dtype=x.dtype).bounds(Box(x - eps, x + eps))
    return res.lower, res.upper


@dataclass
class ErrorBounds:
    """Regression: every parameter vector in the box (and input within ``eps``) has a mean
    squared error on ``(x, y)`` in ``[mse_lower, mse_upper]``, and a mean absolute error of at
    most ``mae_upper``; ``per_sample``: ``(lower, upper)`` of each sample's squared error
    (mean over its outputs)."""

    mse_lower: float
    mse_upper: float
    mae_upper: float
    per_sample: tuple[torch.Tensor, torch.Tensor]


def error_bounds(model: nn.Module, bounds, x: torch.Tensor, y: torch.Tensor, eps: float = 0.0, method: str = "ibp"):
    """Certified error bounds of a regression model with parameters anywhere in ``bounds`` (a
    :class:`ParameterBounds` or a ``(lower, upper)`` pair of dicts) on ``(x, y)``: per sample
    the output interval ``[l, u]`` gives the error ``out - y`` in ``[l - y, u - y]``, whose
    square lies between 0 (if the interval holds 0) or the smaller end's square, and the larger
    end's square.  See :class:`ErrorBounds`."""
    lower, upper = (bounds.lower, bounds.upper) if hasattr(bounds, "lower") else bounds
    x = x.to(next(iter(lower.values())).dtype)
    lo, hi = logit_bounds(model, lower, upper, x, eps, method)
    t = torch.as_tensor(y, dtype=lo.dtype).reshape(lo.shape)
    e_lo, e_hi = lo - t, hi - t
    big = torch.maximum(e_lo.abs(), e_hi.abs())
    small = torch.where((e_lo <= 0) & (e_hi >= 0), torch.zeros_like(e_lo), torch.minimum(e_lo.abs(), e_hi.abs()))
    n = max(len(lo), 1)
    sq_lo = (small**2).reshape(n, -1).mean(1)
    sq_hi = (big**2).reshape(n, -1).mean(1)
    return ErrorBounds(float(sq_lo.mean()), float(sq_hi.mean()), float(big.mean()), (sq_lo, sq_hi))


def certify(
    model: nn.Module, bounds, x: torch.Tensor, y: torch.Tensor | None = None, eps: float = 0.0, method: str = "ibp"
) -> Certification:
    """Certify ``model`` with parameters anywhere in ``bounds`` (a :class:`ParameterBounds` or a
    ``(lower, upper)`` pair of dicts) on inputs ``x`` with test-time radius ``eps``.

    Strict margins: class ``c`` is certified when the lower bound of its logit exceeds the upper
    bound of every other logit; with a single logit, class 1 when the lower bound is > 0 and
    class 0 when the upper bound is < 0.  Everything else abstains (-1).  ``method``: the
    domain bounding the logits (``ibp``, or ``crown``/``alpha-crown`` with bounded weights:
    tighter, slower)."""
    lower, upper = (bounds.lower, bounds.upper) if hasattr(bounds, "lower") else bounds
    x = x.to(next(iter(lower.values())).dtype)
    lo, hi = logit_bounds(model, lower, upper, x, eps, method)
    if lo.dim() == 1 or lo.shape[-1] == 1:
        lo, hi = lo.reshape(-1), hi.reshape(-1)
        classes = torch.full(lo.shape, -1, dtype=torch.int64)
        classes[lo > 0] = 1
        classes[hi < 0] = 0
    else:
        c = lo.argmax(1)
        others = hi.clone()
        others[torch.arange(len(c)), c] = -float("inf")
        ok = lo[torch.arange(len(c)), c] > others.amax(1)
        classes = torch.where(ok, c, torch.full_like(c, -1))
    cert = float((classes >= 0).double().mean()) if len(classes) else 0.0
    acc = float((classes == y).double().mean()) if y is not None and len(classes) else None
    return Certification(classes, acc, cert)


@dataclass
class PredictionRange:
    """How far the training data's threat model can move each prediction: every parameter
    vector in the box gives outputs in ``[lower, upper]`` (per sample and output);
    ``movement``: per sample the largest distance from the nominal output ``nominal`` to an
    end of that range (over outputs); ``stable``: per sample, whether the predicted class (the
    argmax, or the sign of a single logit) is the nominal one for every vector in the box."""

    lower: torch.Tensor
    upper: torch.Tensor
    nominal: torch.Tensor
    movement: torch.Tensor
    stable: torch.Tensor


def prediction_range(model: nn.Module, bounds, x: torch.Tensor, method: str = "ibp") -> PredictionRange:
    """The range of each prediction on ``x`` over the parameter box ``bounds`` (a
    :class:`ParameterBounds`, whose ``nominal`` parameters give the nominal outputs).  With a box
    trained on ``substitution(x, y, k)`` (and clipping) this is Abstract Gradient Training's
    privacy-style bound: how far changing up to ``k`` samples of each batch can move each
    prediction; with ``removal``, how far unlearning them can."""
    from torch.func import functional_call

    x = x.to(next(iter(bounds.lower.values())).dtype)
    lo, hi = logit_bounds(model, bounds.lower, bounds.upper, x, 0.0, method)
    m = copy.deepcopy(model).to(lo.dtype)
    with torch.no_grad():
        nom = functional_call(m, bounds.nominal, (x,)).reshape(lo.shape)
    n = max(len(lo), 1)
    move = torch.maximum(hi - nom, nom - lo).reshape(n, -1).amax(1)
    cls = certify(model, bounds, x, None, 0.0, method).classes
    if lo.dim() == 1 or lo.shape[-1] == 1:
        nominal_cls = (nom.reshape(-1) > 0).long()
    else:
        nominal_cls = nom.argmax(1)
    return PredictionRange(lo, hi, nom, move, cls == nominal_cls)
