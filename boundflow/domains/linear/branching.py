"""Branching scores for activation splitting, read off the last back-substitution.

For a ReLU whose input ``z`` has bounds ``l < 0 < u``, the lower bound of the objective pays for
the relaxation wherever the ReLU output's coefficient ``A`` is negative: the upper line's
intercept ``-l u / (u - l)`` times ``-A`` (BaBSR's intercept score, Bunel et al. 2020); where
``A`` is positive the lower line's slack counts too, with a smaller weight.  Splitting the neuron
makes both lines exact, so the score estimates what the split gains.  For sigmoid and tanh
(whose input range a search may bisect, GenBaB-style) the score is ``|A|`` times the largest
gap between the relaxation's upper and lower line on the input's range.  Scores are a
heuristic: they choose the order of a search and never enter a bound.
"""

from __future__ import annotations

import torch
from torch import fx

from boundflow.domains.linear.relaxations import S_SHAPED
from boundflow.domains.linear.state import BoundState, relaxation_lines

__all__ = ["request_scores", "branch_scores"]

_RELU = torch.ops.aten.relu.default
_SCORED = (_RELU, *S_SHAPED)

# weight of positive coefficients (the lower line's slack) against negative ones
POSITIVE_WEIGHT = 0.1


def _relus_of(state: BoundState, names) -> dict[str, list[fx.Node]]:
    by_name = {n.name: n for n in state.graph.gm.graph.nodes}
    out = {}
    for name in names:
        node = by_name.get(name)
        if node is not None and node in state.lower:
            relus = [u for u in node.users if u.op == "call_function" and u.target in _SCORED]
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
    for name, acts in _relus_of(state, names).items():
        z = acts[0].args[0]
        l, u = state.lower[z], state.upper[z]
        total = torch.zeros_like(l)
        for r in acts:
            A = state.record.get(r)
            if A is None:
                continue
            A = A.expand(A.shape[0], *l.shape)
            if r.target is _RELU:
                unstable = (l < 0) & (u > 0)
                intercept = torch.where(unstable, -l * u / (u - l).clamp(min=1e-30), torch.zeros_like(l))
                weight = (-A).clamp(min=0).sum(0) + POSITIVE_WEIGHT * A.clamp(min=0).sum(0)
                total = total + weight * intercept
            else:  # the widest gap between the lines on [l, u] (at an end point: both are lines)
                a_l, b_l, a_u, b_u = relaxation_lines(state, r)
                gap = torch.maximum((a_u - a_l) * l + (b_u - b_l), (a_u - a_l) * u + (b_u - b_l)).clamp(min=0)
                total = total + A.abs().sum(0) * gap.nan_to_num(nan=0.0, posinf=0.0)
        out[name] = total
    return out
