"""The result of every bounding query: :class:`Bounds`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Bounds"]


@dataclass
class Bounds:
    """Sound bounds ``lower <= f(x) <= upper`` for every input of the spec (``f`` is the model's
    output, or ``C @ y - d`` under an output spec, shape ``(B, S)``).

    ``exact``: where known, a boolean tensor (shape of the bounds) marking entries whose both
    bounds are the optimum (exact solvers); ``empty``: where known, a boolean ``(B,)`` marking
    sub-domains proved empty by split constraints (their bounds are then vacuous but harmless);
    ``intermediate``: node name -> ``(lower, upper)`` of the nodes a branch-and-bound search
    splits on; ``scores``: where the domain offers them (the linear domains, under split
    constraints), node name -> per-neuron heuristic gain of splitting there (larger first; a
    search order, never part of a bound); ``params``: where the domain offers them
    (alpha-CROWN under split constraints), its optimised slopes and multipliers by node name
    (batch-first), to warm-start queries on the samples' sub-domains; ``stats``: numbers about the run (seconds, solves,
    ...).  Unpacks as ``lower, upper = bounds``."""

    lower: torch.Tensor
    upper: torch.Tensor
    exact: torch.Tensor | None = None
    empty: torch.Tensor | None = None
    intermediate: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def __iter__(self):
        yield self.lower
        yield self.upper

    def intersect(self, other: Bounds) -> Bounds:
        """The intersection with another sound result for the same query (still sound).  Where
        rounding crosses the two (lower > upper: both nearly exact), the crossed pair is kept in
        order, ``[min, max]``, never read as an empty set."""
        lo, hi = torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper)
        crossed = lo > hi
        lo, hi = torch.where(crossed, hi, lo), torch.where(crossed, lo, hi)
        return Bounds(lo, hi, self.exact, self.empty, self.intermediate, self.scores, self.params, self.stats)
