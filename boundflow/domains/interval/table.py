"""The interval domain's rule table: one entry per ATen op, filled with :func:`implements`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Rule", "RULES", "implements", "FUNCTION_OVERRIDES", "overrides"]


@dataclass(frozen=True)
class Rule:
    """A sound interval rule for one ATen op.

    ``fn`` receives the op's own arguments (``IntervalTensor`` where the caller passed one) and
    returns ``IntervalTensor`` results whose bounds contain every concrete result of the op on
    every choice of concrete operands inside the operand intervals.
    """

    op: torch._ops.OpOverload
    fn: Callable


RULES: dict[torch._ops.OpOverload, Rule] = {}

# torch-level functions rerouted before autograd (used where autograd's own backward formula
# would need an argmax that intervals cannot supply).
FUNCTION_OVERRIDES: dict[Callable, Callable] = {}


def implements(*ops: torch._ops.OpOverload) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the interval rule of each ATen overload in ``ops``.

    Example::

        from boundflow.domains.interval import implements, lohi, make

        @implements(torch.ops.aten.erf.default)
        def erf(x):
            lo, hi = lohi(x)                 # erf is increasing
            return make(torch.erf(lo), torch.erf(hi))

    A rule must be sound: its result must contain the op's value for every concrete choice of
    operands inside the operand intervals.  Add a containment test for it.
    """

    def deco(fn: Callable) -> Callable:
        for op in ops:
            if not isinstance(op, torch._ops.OpOverload):
                raise TypeError(f"implements() takes ATen overloads such as aten.mm.default, got {op!r}")
            if op in RULES:
                raise ValueError(f"an interval rule for {op} is already registered")
            RULES[op] = Rule(op, fn)
        return fn

    return deco


def overrides(*funcs: Callable) -> Callable[[Callable], Callable]:
    """Register a replacement for torch-level functions (``torch.amax``, ``Tensor.max`` ...)
    called with an ``IntervalTensor`` argument."""

    def deco(fn: Callable) -> Callable:
        for f in funcs:
            FUNCTION_OVERRIDES[f] = fn
        return fn

    return deco
