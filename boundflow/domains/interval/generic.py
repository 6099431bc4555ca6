"""Rule factories for the common shapes of rules: structural ops (no arithmetic), ops that are
monotone in every interval operand, accumulating ops (sums, pools) and factories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten  # noqa: F401

from boundflow import rounding
from boundflow.domains.interval.table import implements
from boundflow.domains.interval.tensor import IntervalTensor, exact_value, make, propagate_mid_rad

__all__ = [
    "side",
    "structural",
    "monotone_rule",
    "accumulating",
    "factory",
    "available",
]

aten = torch.ops.aten


def available(*names: str) -> list[torch._ops.OpOverload]:
    """Overloads that exist in the installed torch (``"pkg.overload"`` strings)."""
    out = []
    for n in names:
        pkt, ov = n.split(".")
        op = getattr(getattr(aten, pkt, None), ov, None)
        if op is not None:
            out.append(op)
    return out


def side(tree: Any, which: int, what: str = "operand", data_first: bool = False, data_all: bool = False) -> Any:
    """Replace each float ``IntervalTensor`` by its lower (0) or upper (1) bound.  Integer and
    bool intervals are indices or masks and must be exact, except in the first argument when
    ``data_first`` (the data operand of structural ops, e.g. a view of an argmax interval)."""

    def f(a: Any, data: bool = False) -> Any:
        if isinstance(a, IntervalTensor):
            if data or a._lower.is_floating_point():
                return a._lower if which == 0 else a._upper
            return exact_value(a, f"an integer/bool {what}")
        if type(a) in (list, tuple):
            return type(a)(f(b, data) for b in a)
        return a

    if isinstance(tree, dict):
        return {k: f(v, data_all) for k, v in tree.items()}
    if data_all:
        return tuple(f(a, True) for a in tree)
    if data_first and tree:
        return (f(tree[0], True), *(f(a) for a in tree[1:]))
    return tuple(f(a) for a in tree)


def _zip(lo_tree: Any, hi_tree: Any, *, exact: bool, rounded: bool = False, err_tree: Any = None) -> Any:
    if isinstance(lo_tree, torch.Tensor) and err_tree is None:
        return make(lo_tree, hi_tree, exact=exact, rounded=rounded)
    lo_leaves, spec = tree_flatten(lo_tree)
    hi_leaves, _ = tree_flatten(hi_tree)
    err_leaves = tree_flatten(err_tree)[0] if err_tree is not None else [None] * len(lo_leaves)
    out = []
    for lo, hi, err in zip(lo_leaves, hi_leaves, err_leaves):
        if isinstance(lo, torch.Tensor):
            if err is not None:
                lo, hi = rounding.widen_abs(lo, hi, err)
                out.append(make(lo, hi, rounded=True))
            else:
                out.append(make(lo, hi, exact=exact, rounded=rounded))
        else:
            out.append(lo)
    return tree_unflatten(out, spec)


def structural(*ops: torch._ops.OpOverload, keep_cache: bool = False) -> None:
    """Ops that only move, copy or select entries (views, cat, indexing with exact indices,
    padding with an exact value): applied to the lower and to the upper bounds separately.
    Exact: no arithmetic, no rounding.  ``keep_cache``: pure views of one operand, which also
    carry over the cached midpoint/radius used by matrix products."""

    for op in ops:

        def make_rule(op: torch._ops.OpOverload) -> Callable:
            def rule(*args: Any, **kwargs: Any) -> Any:
                lo = op(*side(args, 0, data_first=True), **side(kwargs, 0))
                hi = op(*side(args, 1, data_first=True), **side(kwargs, 1))
                out = _zip(lo, hi, exact=True)
                if keep_cache:
                    propagate_mid_rad(args[0], out, op, args, kwargs)
                return out

            return rule

        implements(op)(make_rule(op))


def monotone_rule(
    *ops: torch._ops.OpOverload,
    decreasing: bool = False,
    ulps: float | None = None,
    exact: bool = False,
) -> None:
    """Ops non-decreasing (or non-increasing) in every interval operand, e.g. ``exp``,
    ``sigmoid``, ``relu``, ``clamp``, ``maximum``.  ``ulps``: relative rounding allowance under
    ``sound_rounding`` for functions that are not correctly rounded (default: one ulp);
    ``exact``: the op returns one of its operands or an exactly representable value (``relu``,
    ``clamp``, ``maximum``, ``floor``, ``sign``...), so nothing is rounded.  They must map every
    non-NaN operand (including infinities) to a non-NaN value."""
    for op in ops:

        def make_rule(op: torch._ops.OpOverload) -> Callable:
            def rule(*args: Any, **kwargs: Any) -> Any:
                lo = op(*side(args, 0, data_all=True), **side(kwargs, 0, data_all=True))
                hi = op(*side(args, 1, data_all=True), **side(kwargs, 1, data_all=True))
                if decreasing:
                    lo, hi = hi, lo
                if exact:
                    return make(lo, hi, rounded=True, nan_free=True)
                if ulps is not None and rounding.rounding_enabled():
                    lo, hi = rounding.widen_rel(lo, hi, ulps)
                    return make(lo, hi, rounded=True, nan_free=True)
                return make(lo, hi, nan_free=True)

            return rule

        implements(op)(make_rule(op))


def _magnitude(tree: Any) -> Any:
    def f(a: Any) -> Any:
        if isinstance(a, IntervalTensor) and a._lower.is_floating_point():
            return torch.maximum(a._lower.abs(), a._upper.abs())
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.abs()
        return a

    return tree_map(f, tree)


def accumulating(op: torch._ops.OpOverload, n_terms: Callable[..., int], register: bool = True) -> Callable:
    """Linear ops with non-negative coefficients (sums, means, average pools, scatter-add):
    monotone, so applied to each bound; under ``sound_rounding`` widened by the a-priori error
    of an ``n_terms(*args)``-term sum evaluated on magnitude bounds.  Returns the rule
    (registered for ``op`` unless ``register`` is False)."""

    def rule(*args: Any, **kwargs: Any) -> Any:
        lo = op(*side(args, 0, data_first=True), **side(kwargs, 0))
        hi = op(*side(args, 1, data_first=True), **side(kwargs, 1))
        if rounding.rounding_enabled():
            mag = op(*_magnitude(args), **_magnitude(kwargs))
            n = n_terms(*args, **kwargs)
            err = tree_map(lambda m: rounding.dot_error(n, m) if isinstance(m, torch.Tensor) else None, mag)
            return _zip(lo, hi, exact=False, err_tree=err)
        return _zip(lo, hi, exact=False)

    if register:
        implements(op)(rule)
    return rule


def factory(*ops: torch._ops.OpOverload) -> None:
    """``ones_like``, ``new_zeros`` ...: the result is exact and does not depend on the
    operand's values; returned as a zero-width ``IntervalTensor`` so later in-place writes of
    interval values into it work."""
    for op in ops:

        def make_rule(op: torch._ops.OpOverload) -> Callable:
            def rule(*args: Any, **kwargs: Any) -> Any:
                r = op(*side(args, 0), **side(kwargs, 0))
                return make(r, r.clone(), exact=True)

            return rule

        implements(op)(make_rule(op))
