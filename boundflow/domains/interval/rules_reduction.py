"""Reductions: sum, mean, cumsum, logsumexp, max/min (values, indices), argmax/argmin.

Max and min need care under autograd: torch's backward formulas route the gradient with the
concrete argmax (``max.dim``) or an equality mask (``amax``), neither of which is determined on
intervals.  ``torch.max``/``amax``/``min``/``amin`` called on an ``IntervalTensor`` are therefore
rerouted to an autograd function whose backward gives the gradient to the certain argmax and the
hull of gradient and 0 to every possible argmax.  Index results are integer intervals that
contain every possible argmax.
"""

from __future__ import annotations

import math

import torch

from boundflow import rounding
from boundflow.domains.interval.generic import accumulating, available, monotone_rule, structural
from boundflow.domains.interval.rules_pooling import _argmax_sets, max_grad_contributions
from boundflow.domains.interval.table import implements, overrides
from boundflow.domains.interval.tensor import IntervalTensor, lohi, make

aten = torch.ops.aten


def _dims(self, dim) -> list[int]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(self.dim()))
    if isinstance(dim, int):
        dim = [dim]
    return [d % max(self.dim(), 1) for d in dim]


def _reduced(self, dim=None, *a, **k) -> int:
    return max(1, math.prod(self.shape[d] for d in _dims(self, dim))) if self.dim() else 1


accumulating(aten.sum.default, lambda self, dtype=None: max(1, self.numel()))
accumulating(aten.sum.dim_IntList, lambda self, dim=None, *a, **k: _reduced(self, dim))
accumulating(aten.mean.default, lambda self, dtype=None: max(1, self.numel()) + 1)
accumulating(aten.mean.dim, lambda self, dim=None, *a, **k: _reduced(self, dim) + 1)
accumulating(aten.cumsum.default, lambda self, dim, *a, **k: self.shape[dim] if self.dim() else 1)
monotone_rule(aten.logsumexp.default, ulps=rounding.TRANSCENDENTAL_ULPS + 4)
structural(*available("amax.default", "amin.default", "max.default", "min.default"))


def _to_last(t: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, list[int]]:
    keep = [d for d in range(t.dim()) if d not in dims]
    perm = keep + dims
    moved = t.permute(perm) if t.dim() else t.reshape(1)
    return moved.reshape(*[t.shape[d] for d in keep], -1), perm


def _index_interval(self, dim: int, keepdim: bool, largest: bool) -> IntervalTensor:
    lo, hi = lohi(self)
    if not largest:
        lo, hi = -hi, -lo
    w_lo, w_hi = lo.movedim(dim, -1), hi.movedim(dim, -1)
    _, possible = _argmax_sets(w_lo, w_hi)
    pos = torch.arange(w_lo.shape[-1], device=lo.device).expand_as(possible)
    i_lo = torch.where(possible, pos, w_lo.shape[-1]).amin(-1)
    i_hi = torch.where(possible, pos, -1).amax(-1)
    if keepdim:
        i_lo, i_hi = i_lo.unsqueeze(dim), i_hi.unsqueeze(dim)
    return make(i_lo, i_hi, exact=True)


def _flat_index_interval(self, largest: bool) -> IntervalTensor:
    flat = IntervalTensor(lohi(self)[0].reshape(-1), lohi(self)[1].reshape(-1), check=False)
    return _index_interval(flat, 0, False, largest)


@implements(aten.max.dim)
def max_dim(self, dim, keepdim=False):
    lo, hi = lohi(self)
    v = make(lo.amax(dim, keepdim), hi.amax(dim, keepdim), exact=True)
    return v, _index_interval(self, dim, keepdim, True)


@implements(aten.min.dim)
def min_dim(self, dim, keepdim=False):
    lo, hi = lohi(self)
    v = make(lo.amin(dim, keepdim), hi.amin(dim, keepdim), exact=True)
    return v, _index_interval(self, dim, keepdim, False)


@implements(aten.argmax.default)
def argmax(self, dim=None, keepdim=False):
    """An integer interval containing every possible argmax (exact where one entry's lower
    bound beats every other upper bound)."""
    if dim is None:
        return _flat_index_interval(self, True)
    return _index_interval(self, dim, keepdim, True)


@implements(aten.argmin.default)
def argmin(self, dim=None, keepdim=False):
    if dim is None:
        return _flat_index_interval(self, False)
    return _index_interval(self, dim, keepdim, False)


class _IntervalMax(torch.autograd.Function):
    """``amax`` over ``dims`` with a sound interval backward (see module docstring)."""

    @staticmethod
    def forward(ctx, x: IntervalTensor, dims: list[int], keepdim: bool):
        lo, hi = lohi(x)
        w_lo, perm = _to_last(lo, dims)
        w_hi, _ = _to_last(hi, dims)
        v_lo, v_hi = w_lo.amax(-1), w_hi.amax(-1)
        out_shape = [1 if d in dims else s for d, s in enumerate(lo.shape)] if keepdim else list(v_lo.shape)
        ctx.save_for_backward(w_lo, w_hi)
        ctx.meta = (perm, list(lo.shape), list(v_lo.shape))
        return make(v_lo.reshape(out_shape), v_hi.reshape(out_shape), exact=True)

    @staticmethod
    def backward(ctx, grad):
        w_lo, w_hi = ctx.saved_tensors
        perm, in_shape, red_shape = ctx.meta
        g_lo, g_hi = lohi(grad)
        g_lo, g_hi = g_lo.reshape(red_shape), g_hi.reshape(red_shape)
        c_lo, c_hi = max_grad_contributions(w_lo, w_hi, g_lo, g_hi)
        moved_shape = [in_shape[p] for p in perm]
        inv = [perm.index(i) for i in range(len(perm))]

        def back(c: torch.Tensor) -> torch.Tensor:
            c = c.reshape(moved_shape)
            return c.permute(inv) if len(in_shape) else c.reshape(in_shape)

        return make(back(c_lo), back(c_hi), exact=True), None, None


def _interval_max(x: IntervalTensor, dims, keepdim: bool, largest: bool) -> IntervalTensor:
    d = _dims(x, dims)
    if largest:
        return _IntervalMax.apply(x, d, keepdim)
    return -_IntervalMax.apply(-x, d, keepdim)


def _parse_dim(args, kwargs) -> tuple[object, bool, bool]:
    """(dim, keepdim, binary) from the arguments after the tensor."""
    dim = kwargs.get("dim", args[0] if args else None)
    keepdim = kwargs.get("keepdim", args[1] if len(args) > 1 else False)
    binary = isinstance(dim, torch.Tensor) or "other" in kwargs
    return dim, bool(keepdim), binary


def _make_max_override(largest: bool, values_only: bool, return_type):
    def override(x, *args, **kwargs):
        if not isinstance(x, IntervalTensor) or kwargs.get("out") is not None:
            return NotImplemented
        dim, keepdim, binary = _parse_dim(args, kwargs)
        if binary:
            return NotImplemented
        if values_only:
            return _interval_max(x, dim, keepdim, largest)
        if dim is None:
            return _interval_max(x, None, False, largest)
        values = _interval_max(x, dim, keepdim, largest)
        with torch.no_grad():
            indices = _index_interval(x, dim % max(x.dim(), 1), keepdim, largest)
        return return_type((values, indices))

    return override


overrides(torch.amax, torch.Tensor.amax)(_make_max_override(True, True, None))
overrides(torch.amin, torch.Tensor.amin)(_make_max_override(False, True, None))
overrides(torch.max, torch.Tensor.max)(_make_max_override(True, False, torch.return_types.max))
overrides(torch.min, torch.Tensor.min)(_make_max_override(False, False, torch.return_types.min))
