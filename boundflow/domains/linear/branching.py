"""Branching scores for activation splitting, read off the last back-substitution.

For a ReLU whose input ``z`` has bounds ``l < 0 < u``, the lower bound of the objective pays for
the relaxation wherever the ReLU output's coefficient ``A`` is negative: the upper line's
intercept ``-l u / (u - l)`` times ``-A`` (BaBSR's intercept score, Bunel et al. 2020); where
``A`` is positive the lower line's slack counts too, with a smaller weight.  Splitting the neuron
makes both lines exact, so the score estimates what the split gains.  Scores are a heuristic:
they choose the order of a search and never enter a bound.
"""

from __future__ import annotations

import torch
from torch import fx

from boundflow.domains.linear.state import BoundState

__all__ = ["request_scores", "branch_scores"]

_RELU = torch.ops.aten.relu.default

# weight of positive coefficients (the lower line's slack) against negative ones
POSITIVE_WEIGHT = 0.1


def _relus_of(state: BoundState, names) -> dict[str, list[fx.Node]]:
    by_name = {n.name: n for n in state.graph.gm.graph.nodes}
    out = {}
    for name in names:
        node = by_name.get(name)
        if node is not None and node in state.lower:
            relus = [u for u in node.users if u.op == "call_function" and u.target is _RELU]
            if relus:
                out[name] = relus
    return out


def request_scores(state: BoundState, names) -> None:
    """Have the next back-substitutions keep the lower-bound coefficients of the ReLUs that
    read the nodes ``names`` (the last one run is the one scored)."""
    for relus in _relus_of(state, names).values():
        for r in relus:
            state.record[r] = None


def branch_scores(state: BoundState, names) -> dict[str, torch.Tensor]:
    """Node name -> ``(B, *node)`` score of splitting each neuron (0 where its sign is known or
    no coefficient was recorded); larger first."""
    out = {}
    for name, relus in _relus_of(state, names).items():
        z = relus[0].args[0]
        l, u = state.lower[z], state.upper[z]
        unstable = (l < 0) & (u > 0)
        intercept = torch.where(unstable, -l * u / (u - l).clamp(min=1e-30), torch.zeros_like(l))
        weight = torch.zeros_like(l)
        for r in relus:
            A = state.record.get(r)
            if A is None:
                continue
            A = A.expand(A.shape[0], *l.shape)
            weight = weight + (-A).clamp(min=0).sum(0) + POSITIVE_WEIGHT * A.clamp(min=0).sum(0)
        out[name] = weight * intercept
    return out
