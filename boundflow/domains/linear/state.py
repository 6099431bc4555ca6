"""The per-run state of the linear domain (:class:`BoundState`) and the small helpers every
rule shares: operand classification, coefficient accumulation, intersection of sound ranges."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from boundflow.domains.interval import IntervalTensor
from boundflow.graph import CapturedGraph

aten = torch.ops.aten

__all__ = ["BoundState", "INTERMEDIATE_WORK_MAX", "intersect", "ordered", "empty_domains"]

# an intermediate node whose CROWN bounds would take more than this many coefficient entries in
# all (rows times the widest coefficient tensor of a row: minutes on two cores) keeps its
# interval bounds (e.g. the 93k neurons of a U-Net's convolution after a concatenation, which
# patches mode does not follow); the output's bound is still CROWN's back-substitution
INTERMEDIATE_WORK_MAX = 2**32


@dataclass
class BoundState:
    """Per-node information of one bounding run."""

    graph: CapturedGraph
    x_lo: torch.Tensor
    x_hi: torch.Tensor
    const: dict = field(default_factory=dict)  # node -> concrete value (constants)
    lower: dict = field(default_factory=dict)  # node -> lower bound (non-constant tensor nodes)
    upper: dict = field(default_factory=dict)
    alpha: dict = field(default_factory=dict)  # relu node -> slope parameters (alpha-CROWN)
    radius: dict = field(default_factory=dict)  # bounded constant node -> radius (centre in const)
    needs_bounds: set = field(default_factory=set)
    tight_pool: bool = False  # max pooling's upper line: also the pivot-difference line
    work_max: int = INTERMEDIATE_WORK_MAX  # see node_bounds
    patches: bool = True  # convolutions' neuron bounds in patches mode (off: matrix mode)
    lines: dict = field(default_factory=dict)  # relaxation node -> (l, u, its lines on [l, u])
    # back-substitutions compute only the lower bound (the upper result is then not a bound)
    lower_only: bool = False
    params: dict = field(default_factory=dict)  # alpha-CROWN's last slopes and multipliers by node name
    # nodes whose lower-bound coefficients the next back-substitution keeps (node -> A or None)
    record: dict = field(default_factory=dict)


def _is_const(state: BoundState, a) -> bool:
    if isinstance(a, fx.Node):
        return a in state.const
    if isinstance(a, (list, tuple)):
        return all(_is_const(state, b) for b in a)
    return True


def _value(state: BoundState, a, env, intervals: bool = False):
    """The value of an argument; with ``intervals``, bounded constants as ``IntervalTensor``."""
    if isinstance(a, fx.Node):
        if a in state.const:
            if intervals and a in state.radius:
                c, r = state.const[a], state.radius[a]
                return IntervalTensor(c - r, c + r, check=False)
            return state.const[a]
        return env[a]
    if isinstance(a, (list, tuple)):
        return type(a)(_value(state, b, env, intervals) for b in a)
    return a


def _bounded(state: BoundState, a) -> bool:
    return any(n in state.radius for n in _flat_nodes(a))


def intersect(lo1: torch.Tensor, hi1: torch.Tensor, lo2: torch.Tensor, hi2: torch.Tensor):
    """The intersection of two sound ranges of the same quantity.  Where rounding makes the
    intersection cross (lower > upper: both bounds are nearly exact), the crossed pair is
    returned in order instead, ``[min, max]``: the true value lies within rounding of both, and
    a crossed bound is never read as an empty set."""
    return ordered(torch.maximum(lo1, lo2), torch.minimum(hi1, hi2))


def ordered(lo: torch.Tensor, hi: torch.Tensor):
    """``(lo, hi)`` with entries where rounding crossed them (lower > upper) swapped."""
    crossed = lo > hi
    if crossed.any():
        lo, hi = torch.where(crossed, hi, lo), torch.where(crossed, lo, hi)
    return lo, hi


def _flat_nodes(a) -> list:
    if isinstance(a, fx.Node):
        return [a]
    if isinstance(a, (list, tuple)):
        return [n for b in a for n in _flat_nodes(b)]
    return []


def _is_tuple_head(n: fx.Node) -> bool:
    """``getitem(op, 0)`` of batch norm (affine); max pooling is not affine."""
    return (
        n.target is operator.getitem
        and n.args[1] == 0
        and n.args[0].target in (aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default)
    )


def empty_domains(state: BoundState) -> torch.Tensor:
    """Per batch element: True where the overrides made the sub-domain empty."""
    return getattr(state, "empty", torch.zeros(state.x_lo.shape[0], dtype=torch.bool, device=state.x_lo.device))


def _shape(state: BoundState, node: fx.Node) -> tuple[int, ...]:
    if node in state.lower:
        return tuple(state.lower[node].shape)
    meta = node.meta.get("val")
    if meta is not None:
        return tuple(meta.shape)
    raise RuntimeError(f"no shape for node {node}")


def _add(pending: dict, node, lA, uA) -> None:
    """Accumulate coefficients for ``node`` (``lA is uA`` is kept shared while possible)."""
    if node in pending:
        pl, pu = pending[node]
        if pl is pu and lA is uA:
            t = pl + lA
            pending[node] = (t, t)
        else:
            pending[node] = (pl + lA, pu + uA)
    else:
        pending[node] = (lA, uA)


def relaxation_lines(state: BoundState, node: fx.Node, alpha=None) -> tuple:
    """``(a_l, b_l, a_u, b_u)`` of the elementwise relaxation ``node`` on its input's bounds;
    without alpha-CROWN slopes computed once per bounds (a back-substitution from every later
    node passes through it)."""
    from boundflow.domains.linear.relaxations import RELAXATIONS

    inp = node.args[0]
    l, u = state.lower[inp], state.upper[inp]
    if alpha is not None:
        return RELAXATIONS[node.target](node, l, u, alpha)
    hit = state.lines.get(node)
    if hit is None or hit[0] is not l or hit[1] is not u:
        hit = state.lines[node] = (l, u, RELAXATIONS[node.target](node, l, u, None))
    return hit[2]


def _sum_tail(t: torch.Tensor) -> torch.Tensor:
    """Sum over all dims after (S, B)."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)
