"""CROWN / DeepPoly back-substitution on a captured ATen graph, with optimised slopes
(alpha-CROWN) for ReLU-like activations.

Every intermediate node gets interval bounds (the interval rules), and every input of a
nonlinearity additionally gets CROWN bounds by back-substitution from that node; the two are
intersected, so no bound is looser than interval propagation.  The output specification
``C @ y`` is bounded directly.

Linear algebra of the backward pass: coefficient tensors ``A`` of shape ``(S, B, *node)``
(``S`` rows of the specification, ``B`` batch) are pushed through affine ops with their
vector-Jacobian product (``torch.func.vjp``, vmapped over ``S``), and through nonlinearities with
their linear relaxation (positive coefficients take the lower line for a lower bound, negative
ones the upper line).  Sound in exact arithmetic on the float64 inputs; not covered by
``sound_rounding``.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx

from boundflow import deadline
from boundflow.domains.interval import IntervalTensor, lohi
from boundflow.domains.linear.backward import BACKWARD, backsub, needs_input_bounds
from boundflow.domains.linear.branching import request_scores
from boundflow.domains.linear.maxpool import deeppoly_pool
from boundflow.domains.linear.ops import AFFINE_OPS, POSITIVE_LINEAR, PRODUCT_OPS, TUPLE_OPS
from boundflow.domains.linear.patches import (
    REARRANGE,
    Rows,
    patch_bounds,
    patch_chain,
    patch_entries,
    uses_matrix_mode,
)
from boundflow.domains.linear.relaxations import RELAXATIONS
from boundflow.domains.linear.state import (
    INTERMEDIATE_WORK_MAX,
    BoundState,
    _bounded,
    _flat_nodes,
    _is_const,
    _is_tuple_head,
    _shape,
    _value,
    empty_domains,
    intersect,
    ordered,
)
from boundflow.errors import UnsupportedOperation
from boundflow.graph import CapturedGraph

aten = torch.ops.aten

__all__ = [
    "AFFINE_OPS",
    "EMPTY_TOLERANCE",
    "POSITIVE_LINEAR",
    "PRODUCT_OPS",
    "TUPLE_OPS",
    "BoundState",
    "backsub",
    "crown",
    "deeppoly_pool",
    "empty_domains",
    "intersect",
    "node_bounds",
    "ordered",
    "prepare",
    "spec_coefficients",
]

# a sub-domain is empty only when a split constraint contradicts a sound bound by more than this
# (relative to the bound's magnitude): a smaller contradiction is rounding noise, never a proof
EMPTY_TOLERANCE = 1e-6

# linear maps with non-negative coefficients (moving, selecting or averaging entries)


def _nonlinear_input(node: fx.Node) -> fx.Node | None:
    if node.target in RELAXATIONS:
        return node.args[0]
    if node.target is aten.max_pool2d_with_indices.default:
        return node.args[0]
    return None


# forward-mode intermediate bounds pay when the input is narrow and the network wide: backward
# CROWN back-substitutes from every entry of every nonlinearity's input through every earlier
# one (cost ~ sum over nonlinearities of entries x entries before it), forward mode carries one
# form per input through the network (cost ~ inputs x entries).  Forward bounds are looser, so
# they are taken only where the backward pass would cost minutes: the shared VNN-COMP networks
# split cleanly (TLL nets <= 9e7, 5-input cGANs and 16-input bias-field CNNs >= 8e8)
FORWARD_INPUTS = 64
FORWARD_COST = 2e8


def backward_cost(graph: CapturedGraph, n_inputs: int) -> float:
    """The entries a backward CROWN pass touches for intermediate bounds (per sample): each
    nonlinearity input's entries times the entries of the input and of every nonlinearity
    input before it."""
    before, cost = n_inputs, 0.0
    for n in graph.gm.graph.nodes:
        t = _nonlinear_input(n) if n.op == "call_function" else None
        v = t.meta.get("val") if isinstance(t, fx.Node) else None
        if isinstance(v, torch.Tensor) and v.dim():
            per_sample = math.prod(v.shape[1:])  # read off the shape: no op on the fake tensor
            cost += per_sample * before
            before += per_sample
    return cost


def forward_pays(graph: CapturedGraph, x_lo: torch.Tensor) -> bool:
    """Whether intermediate bounds come from forward mode: few inputs (at most
    :data:`FORWARD_INPUTS` per sample) and a backward pass of at least :data:`FORWARD_COST`
    entries (:func:`backward_cost`)."""
    n_in = x_lo[0].numel()
    return n_in <= FORWARD_INPUTS and backward_cost(graph, n_in) >= FORWARD_COST


def prepare(
    graph: CapturedGraph,
    x_lo: torch.Tensor,
    x_hi: torch.Tensor,
    refine: bool = True,
    overrides: dict | None = None,
    tight_pool: bool = False,
    sparse: bool = True,
    work_max: int = INTERMEDIATE_WORK_MAX,
) -> BoundState:
    """Constants, interval bounds of every node, and CROWN bounds (intersected) for every
    input of a nonlinearity, in one forward sweep.  ``overrides``: node name -> ``(lo, hi)``
    extra bounds intersected into that node (ReLU splitting: a sub-domain where a neuron is
    known active has ``lo = 0`` there); they must hold on the sub-domain being bounded.
    Entries with lower > upper mark an empty sub-domain (see :func:`empty_domains`).
    ``tight_pool``: max pooling's upper line may be the pivot-difference line
    (:func:`~boundflow.domains.linear.maxpool.maxpool_back`), in every back-substitution.
    ``sparse``: a node read only by ReLU/LeakyReLU (directly or through rearrangements) gets
    CROWN bounds only where its interval
    bounds leave the sign open (a neuron of known sign has the exact relaxation whatever its
    bounds; auto_LiRPA's sparse intermediate bounds); off, every entry (what the solver
    encodings want: every box as tight as CROWN makes it).  ``work_max``: a node whose CROWN
    bounds would take more coefficient entries than this keeps its interval bounds
    (:func:`node_bounds`)."""
    state = BoundState(graph, x_lo, x_hi, tight_pool=tight_pool, work_max=work_max)
    nodes = list(graph.gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    x_node = placeholders[0]
    radii = graph.radii or [None] * len(graph.params)
    for n, v, r in zip(placeholders[1:], graph.params, radii, strict=False):
        state.const[n] = v
        if r is not None:
            state.radius[n] = r
    for n in nodes:
        t = _nonlinear_input(n) if n.op == "call_function" else None
        if t is not None:
            state.needs_bounds.add(t)
        elif needs_input_bounds(n) and n.target is not operator.getitem:
            state.needs_bounds.update(a for a in n.all_input_nodes if a.op != "placeholder" or a is x_node)
    _redirect_bounds(state, nodes, x_node)
    env: dict = {x_node: IntervalTensor(x_lo, x_hi, check=False)}
    state.lower[x_node], state.upper[x_node] = x_lo, x_hi
    # nodes that are an affine function of the input through single-operand affine ops: their
    # interval bounds are already exact (an affine image of a box), so CROWN is skipped there
    affine_of_input = {x_node}
    for n in nodes:
        deadline.check("intermediate bounds")
        if n.op == "placeholder":
            continue
        if n.op == "output":
            break
        if n.op == "get_attr":  # a tensor constant of the traced code (not a parameter or buffer)
            state.const[n] = _attr(graph.gm, n.target)
            continue
        if n.op != "call_function":
            raise UnsupportedOperation(f"graph node {n.op} {n.target} is not supported by the linear domain")
        if _is_const(state, list(n.args)) and _is_const(state, list(n.kwargs.values())):
            with torch.no_grad():
                if _bounded(state, list(n.args) + list(n.kwargs.values())):
                    # a function of bounded weights (e.g. their transpose): keep centre and radius
                    v = n.target(*_value(state, n.args, env, True), **_value(state, n.kwargs, env, True))
                    lo_v, hi_v = lohi(v)
                    state.const[n] = (lo_v + hi_v) / 2
                    state.radius[n] = (hi_v - lo_v) / 2
                else:
                    state.const[n] = n.target(*_value(state, n.args, env), **_value(state, n.kwargs, env))
            continue
        with torch.no_grad():
            val = n.target(*_value(state, n.args, env, True), **_value(state, n.kwargs, env, True))
        env[n] = val
        var_inputs = [a for a in _flat_nodes(n.args) if a not in state.const]
        if (
            (n.target in AFFINE_OPS or n.target in PRODUCT_OPS or _is_tuple_head(n))
            and len(var_inputs) == 1
            and (var_inputs[0] in affine_of_input)
        ):
            affine_of_input.add(n)
        if isinstance(val, IntervalTensor) and val.is_floating_point():
            lo, hi = lohi(val)
            aux = n.target is operator.getitem and n.args[1] != 0  # statistics outputs of batch norm
            if not aux and lo.numel() and (lo.dim() == 0 or lo.shape[0] != x_lo.shape[0]):
                raise UnsupportedOperation(
                    f"linear domain: node {n.name} ({n.target}) has shape {tuple(lo.shape)} without the batch "
                    f"dimension {x_lo.shape[0]} in front; the linear domain needs batch-first models "
                    "(use method='ibp' for this model)"
                )
            # (a node without a linear rule keeps its interval bounds: back-substitution from it
            # would stop at once)
            if refine and n in state.needs_bounds and n not in affine_of_input and n.target in BACKWARD:
                # a sub-domain's extra bounds (splits, a parent's bounds) hold there: a neuron
                # whose sign they settle needs no CROWN row
                m_lo, m_hi = lo, hi
                if overrides and n.name in overrides:
                    m_lo, m_hi = ordered(
                        torch.maximum(lo, overrides[n.name][0]), torch.minimum(hi, overrides[n.name][1])
                    )
                mask = _unstable(n, m_lo, m_hi) if sparse else None
                # its interval bounds first: a rule that falls back to them at this node reads them
                state.lower[n], state.upper[n] = lo, hi
                if mask is None or bool(mask.any()):
                    c_lo, c_hi = node_bounds(state, n, mask=mask)
                    lo, hi = intersect(lo, hi, c_lo.reshape(lo.shape), c_hi.reshape(hi.shape))
                    env[n] = IntervalTensor(lo, hi, check=False)
            if overrides and n.name in overrides:
                o_lo, o_hi = overrides[n.name]
                s_lo, s_hi = lo, hi
                lo, hi = torch.maximum(lo, o_lo), torch.minimum(hi, o_hi)
                # empty only where a split constraint contradicts a sound bound by more than
                # EMPTY_TOLERANCE of its magnitude; a smaller crossing is rounding, never a proof
                scale = 1 + torch.maximum(s_lo.abs(), s_hi.abs()).nan_to_num(posinf=0.0)
                contradiction = (lo - hi) > EMPTY_TOLERANCE * scale
                state.empty = getattr(state, "empty", torch.zeros(lo.shape[0], dtype=torch.bool, device=lo.device)) | (
                    contradiction.reshape(lo.shape[0], -1).any(1)
                )
                lo, hi = ordered(lo, hi)  # a rounding crossing: the hull of the crossed pair
                env[n] = IntervalTensor(lo, hi, check=False)
            state.lower[n], state.upper[n] = lo, hi
    if overrides:  # branch and bound: the final back-substitution keeps what its scores read
        request_scores(state, overrides)
    return state


_RELU_LIKE = (aten.relu.default, aten.leaky_relu.default)

# elementwise affine ops with constant other operands
_SHIFT_SCALE = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.neg.default}


def _redirect_bounds(state: BoundState, nodes: list, x_node: fx.Node) -> None:
    """Where a node that needs bounds is, entry by entry, a shift, scale (batch norm included)
    or rearrangement of one earlier node ``y`` (``sign(x) + b``; a channels-last ``permute`` of
    a convolution), CROWN at the node is no tighter than the interval image of ``y``'s bounds,
    which the forward sweep computes exactly.  So: if ``y`` is an elementwise relaxation (its
    interval bounds are the exact range on its input's bounds, and no linear lower line lies
    above that range), the node keeps its interval bounds; if ``y`` is a convolution reached
    through a rearrangement, ``y`` is bounded instead (in patches mode) and the node inherits
    the rearranged bounds; max pooling's values likewise."""
    varies = {x_node}
    for n in nodes:
        if n.op == "call_function" and any(a in varies for a in n.all_input_nodes):
            varies.add(n)
    for t in list(state.needs_bounds):
        y, moved = t, False
        while y.op == "call_function" and y is not x_node:
            var = [a for a in y.all_input_nodes if a in varies]
            if len(var) != 1 or any(isinstance(a, fx.Node) and a in varies for a in y.kwargs.values()):
                break
            v = var[0]
            if _is_tuple_head(y):  # batch norm at inference: per channel, constant statistics
                bn = y.args[0]
                if [a for a in bn.all_input_nodes if a in varies] != [bn.args[0]] or bn.kwargs:
                    break
                y = bn.args[0]
                continue
            if y.target in REARRANGE and y.args[0] is v:
                y, moved = v, True
                continue
            out, inp = y.meta.get("val"), v.meta.get("val")
            if (
                y.target in _SHIFT_SCALE
                and isinstance(out, torch.Tensor)
                and isinstance(inp, torch.Tensor)
                and out.shape == inp.shape
                and sum(a is v for a in y.args) == 1  # x * x is not a scale
                and not (y.target is aten.div.Tensor and y.args[0] is not v)  # c / x is not affine
            ):
                y = v
                continue
            break
        if y is t:
            continue
        if y.op == "call_function" and y.target in RELAXATIONS:
            state.needs_bounds.discard(t)
        elif moved and y.op == "call_function" and y.target is aten.convolution.default:
            state.needs_bounds.discard(t)
            state.needs_bounds.add(y)
        elif _is_pool_values(y):  # (bounded by CROWN there, in patches mode where it applies)
            state.needs_bounds.discard(t)
            state.needs_bounds.add(y)


def _is_pool_values(n: fx.Node) -> bool:
    """``getitem(max_pool2d_with_indices(...), 0)``: max pooling's values."""
    return (
        n.op == "call_function"
        and n.target is operator.getitem
        and n.args[1] == 0
        and getattr(n.args[0], "target", None) is aten.max_pool2d_with_indices.default
    )


def _unstable(node: fx.Node, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor | None:
    """``(B, n)``: where the sign of ``node`` is open, if every reader of it is a ReLU-like
    activation (for which a neuron of known sign is relaxed exactly); else ``None``."""
    if not _read_by_relus(node):
        return None
    return ((lo < 0) & (hi > 0)).reshape(lo.shape[0], -1)


def _read_by_relus(node: fx.Node) -> bool:
    """Whether every reader of ``node`` is a ReLU-like activation of it, directly or through
    rearrangements (a vmapped graph's views around a unit dimension): each entry then meets a
    ReLU as itself, and one of known sign is relaxed exactly whatever its bounds."""
    users = list(node.users)
    if not users:
        return False
    for u in users:
        if u.op != "call_function" or u.args[0] is not node:
            return False
        if u.target in _RELU_LIKE:
            continue
        rearranges = u.target in REARRANGE and not any(isinstance(a, fx.Node) for a in u.args[1:])
        if not (rearranges and _read_by_relus(u)):
            return False
    return True


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def node_bounds(
    state: BoundState, node: fx.Node, budget: int = 2**24, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds of the entries of ``node`` (identity specification, in chunks of rows so
    that a coefficient tensor has at most about ``budget`` entries); with ``mask`` (bool,
    ``(B, n)`` over the flattened entries) only where it is True, ``(-inf, inf)`` elsewhere.
    ``(-inf, inf)`` everywhere (the caller keeps the interval bounds) when the rows would take
    more than ``state.work_max`` coefficient entries in all (:data:`INTERMEDIATE_WORK_MAX`;
    counted in ``state.skipped``).
    The neurons of a convolution are bounded in patches mode
    (:mod:`~boundflow.domains.linear.patches`; the same bounds, each row on its receptive
    field, one row per sample and neuron where the mask asks) unless ``state.patches`` is off."""
    shape = _shape(state, node)
    b = shape[0]
    n = math.prod(shape[1:])
    dev, dt = state.x_lo.device, state.x_lo.dtype
    lo = torch.full((b, n), -math.inf, dtype=dt, device=dev)
    hi = torch.full((b, n), math.inf, dtype=dt, device=dev)
    if mask is not None and bool(mask.all()):
        mask = None
    steps = patch_chain(state, node) if state.patches else None
    n_rows = int(mask.sum()) if mask is not None else b * n
    if steps is not None:
        work = n_rows * patch_entries(state, steps, not uses_matrix_mode(steps))
    else:
        widest = max(math.prod(_shape(state, m)[1:]) for m in list(state.lower))
        work = n_rows * max(widest, n)
    if work > state.work_max:  # too many (rows x coefficients): the interval bounds stand
        state.skipped = getattr(state, "skipped", 0) + n_rows
        return lo.reshape(shape), hi.reshape(shape)
    if steps is not None:  # a convolution: every neuron on its receptive field only
        # one row per sample and neuron (each row gathers its own slopes; faster than rows
        # shared by every sample even where the mask keeps nearly every pair), except where
        # matrix mode takes over, which needs rows for every sample
        per_sample = not uses_matrix_mode(steps)
        if per_sample:
            b_idx, flat = (mask if mask is not None else torch.ones(b, n, dtype=torch.bool, device=dev)).nonzero(
                as_tuple=True
            )
        else:
            b_idx = None
            flat = mask.any(0).nonzero().squeeze(1) if mask is not None else torch.arange(n, device=dev)
        positions = shape[2] * shape[3]
        chunk = max(1, budget // patch_entries(state, steps, per_sample))
        for s in range(0, len(flat), chunk):
            deadline.check("patch bounds")
            f = flat[s : s + chunk]
            rows = Rows(f // positions, f % positions, None if b_idx is None else b_idx[s : s + chunk])
            lb, ub = patch_bounds(state, node, steps, rows)
            if rows.b is None:
                lo[:, f], hi[:, f] = lb.T, ub.T
            else:
                lo[rows.b, f], hi[rows.b, f] = lb[:, 0], ub[:, 0]
        return lo.reshape(shape), hi.reshape(shape)
    sel = None  # the neurons bounded (None: all, written as contiguous column ranges)
    if mask is not None:
        keep = mask.any(0)
        if not bool(keep.all()):
            sel = keep.nonzero().squeeze(1)
    total = n if sel is None else len(sel)
    widest = max(math.prod(_shape(state, m)[1:]) for m in list(state.lower))
    rows = max(1, budget // max(b * max(widest, n), 1))
    for start in range(0, total, rows):
        k = min(rows, total - start)
        idx = torch.arange(start, start + k, device=dev) if sel is None else sel[start : start + k]
        cols = slice(start, start + k) if sel is None else idx
        eye = torch.zeros(k, n, dtype=dt, device=dev)
        eye[torch.arange(k, device=dev), idx] = 1
        # batch dimension 1: the identity is the same for every sample; relaxations make the
        # coefficients sample-specific later (broadcasting), so the first products are shared
        eye = eye.reshape(k, 1, *shape[1:])
        lb, ub = backsub(state, node, eye, eye)
        lo[:, cols], hi[:, cols] = lb.T, ub.T
    return lo.reshape(shape), hi.reshape(shape)


def spec_coefficients(C, shape, dtype, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The starting coefficients ``(S, B or 1, *out)`` for ``C @ y`` (identity without ``C``),
    and ``C`` normalised to ``(B, S, n_out)``."""
    b = shape[0]
    n_out = 1
    for s in shape[1:]:
        n_out *= s
    if C is None:
        return torch.eye(n_out, dtype=dtype, device=device).reshape(n_out, 1, *shape[1:]), None
    C = torch.as_tensor(C, dtype=dtype, device=device)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(b, *C.shape)
    if C.shape[0] != b or C.shape[-1] != n_out:
        raise ValueError(f"C must have shape (S, {n_out}) or ({b}, S, {n_out}), got {tuple(C.shape)}")
    return C.transpose(0, 1).reshape(C.shape[1], b, *shape[1:]), C


# the most coefficient entries one chunk of output rows may hold in the final back-substitution
OUTPUT_CHUNK_ENTRIES = 2**24


def crown(
    graph: CapturedGraph,
    x_lo: torch.Tensor,
    x_hi: torch.Tensor,
    C: torch.Tensor | None = None,
    *,
    state: BoundState | None = None,
) -> tuple[torch.Tensor, torch.Tensor, BoundState]:
    """Bounds on ``C @ model(x)`` (``C``: ``(S, n_out)`` or ``(B, S, n_out)``; identity by
    default) for every ``x`` in the box.  Returns ``(lb, ub, state)`` with ``lb, ub`` of shape
    ``(B, S)``; without ``C`` the final bounds are intersected with the interval bounds."""
    if state is None:
        state = prepare(graph, x_lo, x_hi)
    out_node = next(n for n in graph.gm.graph.nodes if n.op == "output").args[0]
    shape = _shape(state, out_node)
    b = shape[0]
    # rows in chunks whose coefficient tensors hold at most about OUTPUT_CHUNK_ENTRIES entries
    # (every output of a detector: 21k rows; the identity itself is built chunk by chunk),
    # except where branch and bound records the pass
    widest = max([math.prod(_shape(state, m)[1:]) for m in list(state.lower)] + [math.prod(shape[1:])])
    rows = max(1, OUTPUT_CHUNK_ENTRIES // max(b * widest, 1))
    n_out = math.prod(shape[1:])
    if C is None and n_out > rows and not state.record:
        parts = []
        for s in range(0, n_out, rows):
            deadline.check("output bounds")
            k = min(rows, n_out - s)
            eye = torch.zeros(k, n_out, dtype=x_lo.dtype, device=x_lo.device)
            eye[torch.arange(k, device=x_lo.device), torch.arange(s, s + k, device=x_lo.device)] = 1
            eye = eye.reshape(k, 1, *shape[1:])
            parts.append(backsub(state, out_node, eye, eye))
        lb, ub = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    else:
        A, C = spec_coefficients(C, shape, x_lo.dtype, x_lo.device)
        if A.shape[0] <= rows or state.record:
            lb, ub = backsub(state, out_node, A, A)
        else:
            parts = []
            for s in range(0, A.shape[0], rows):
                deadline.check("output bounds")
                parts.append(backsub(state, out_node, A[s : s + rows], A[s : s + rows]))
            lb, ub = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    lb, ub = lb.transpose(0, 1), ub.transpose(0, 1)
    if out_node in state.lower:
        o_lo, o_hi = state.lower[out_node].reshape(b, -1), state.upper[out_node].reshape(b, -1)
        if C is None:
            lb, ub = intersect(lb, ub, o_lo, o_hi)
        else:
            # interval bound of C @ y from the output box, as a fallback
            c_lo = (C.clamp(min=0) * o_lo.unsqueeze(1) + C.clamp(max=0) * o_hi.unsqueeze(1)).sum(-1)
            c_hi = (C.clamp(min=0) * o_hi.unsqueeze(1) + C.clamp(max=0) * o_lo.unsqueeze(1)).sum(-1)
            lb, ub = intersect(lb, ub, c_lo, c_hi)
    return lb, ub, state
