"""beta-CROWN's split multipliers on any node of the graph.

A sub-domain of branch and bound is the input box restricted by split constraints
``lo_j <= z_j(x) <= hi_j`` on neurons ``z_j`` of graph nodes (a ReLU split is ``z >= 0`` or
``z <= 0``; a split of a general activation's input range is a pair of finite bounds).  The
constraints are already intersected into the intermediate bounds, which makes the relaxations
valid on the sub-domain, but the final concretisation still ranges over the whole box.  beta-CROWN
adds the constraints themselves with multipliers ``beta >= 0``: for every ``x`` of the sub-domain

    c(x) >= c(x) - sum_j beta_lo_j (z_j(x) - lo_j) - sum_j beta_hi_j (hi_j - z_j(x))

(each subtracted term is ``>= 0`` there), so any lower bound of the right-hand side over the box,
computed with relaxations valid on the sub-domain, is a lower bound of ``c`` on the sub-domain;
likewise ``c(x) <= c(x) + sum beta_lo (z - lo) + sum beta_hi (hi - z)`` for the upper bound.
This holds for **every** ``beta >= 0`` (the multipliers are clamped to it), so optimising them
by gradient ascent is safe; ``beta = 0`` is the bound without the terms.  The terms enter the
back-substitution as extra coefficients on ``z`` (:func:`~boundflow.domains.linear.backward.backsub`'s
``extra``) plus a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from boundflow.domains.linear.state import BoundState

__all__ = ["SplitConstraint", "split_constraints", "init_betas", "beta_terms"]


@dataclass
class SplitConstraint:
    """The finite split bounds of one node (batch-first, node-shaped; masks where finite)."""

    node: fx.Node
    lo: torch.Tensor  # finite lower bounds, 0 where there is none
    hi: torch.Tensor
    has_lo: torch.Tensor  # bool
    has_hi: torch.Tensor


def split_constraints(state: BoundState, splits: dict | None) -> list[SplitConstraint]:
    """The constraints of ``splits`` (node name -> ``(lo, hi)``, ``±inf`` where free) on the
    nodes of ``state``'s graph that have bounds; nodes without a finite entry are left out."""
    if not splits:
        return []
    by_name = {n.name: n for n in state.graph.gm.graph.nodes}
    out = []
    for name, (o_lo, o_hi) in splits.items():
        node = by_name.get(name)
        if node is None or node not in state.lower:
            continue
        shape = state.lower[node].shape
        o_lo = torch.as_tensor(o_lo, dtype=state.lower[node].dtype).expand(shape)
        o_hi = torch.as_tensor(o_hi, dtype=state.lower[node].dtype).expand(shape)
        has_lo, has_hi = torch.isfinite(o_lo), torch.isfinite(o_hi)
        if not (bool(has_lo.any()) or bool(has_hi.any())):
            continue
        zero = torch.zeros((), dtype=o_lo.dtype, device=o_lo.device)
        lo, hi = torch.where(has_lo, o_lo, zero), torch.where(has_hi, o_hi, zero)
        out.append(SplitConstraint(node, lo, hi, has_lo, has_hi))
    return out


def init_betas(constraints: list[SplitConstraint], n_specs: int) -> list[torch.Tensor]:
    """Zero multipliers (one ``(2, S, B, *node)`` tensor per constraint: the lower and the upper
    split bound), ready for gradient ascent."""
    return [
        torch.zeros((2, n_specs, *c.lo.shape), dtype=c.lo.dtype, device=c.lo.device).requires_grad_(True)
        for c in constraints
    ]


def beta_terms(constraints: list[SplitConstraint], betas: list[torch.Tensor], sense: str):
    """``(extra, constant)`` for a back-substitution of the ``sense`` (``"lower"`` or
    ``"upper"``) bound: ``extra`` maps each constrained node to its coefficients ``(S, B, *node)``
    (the same tensor for both sides: only the ``sense`` side's result is meaningful), and
    ``constant`` ``(S, B)`` is added to that bound.  Multipliers are clamped to ``>= 0`` and
    masked to the finite split bounds, so every value of ``betas`` gives a sound bound."""
    extra: dict = {}
    const = None
    sign = 1.0 if sense == "lower" else -1.0
    for c, beta in zip(constraints, betas, strict=True):
        b_lo = beta[0].clamp(min=0) * c.has_lo
        b_hi = beta[1].clamp(min=0) * c.has_hi
        # lower: c - b_lo (z - lo) - b_hi (hi - z) = c + (b_hi - b_lo) z + b_lo lo - b_hi hi
        # upper: c + b_lo (z - lo) + b_hi (hi - z) = c + (b_lo - b_hi) z - b_lo lo + b_hi hi
        coef = sign * (b_hi - b_lo)
        k = sign * (b_lo * c.lo - b_hi * c.hi).flatten(2).sum(-1)
        extra[c.node] = (coef, coef)
        const = k if const is None else const + k
    return extra, const
