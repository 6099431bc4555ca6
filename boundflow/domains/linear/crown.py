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

import operator
from dataclasses import dataclass, field

import torch
from torch import fx
from torch.func import vjp, vmap

from boundflow.domains.interval import IntervalTensor, lohi
from boundflow.domains.interval.rules_pooling import pool_index_windows
from boundflow.domains.linear.relaxations import RELAXATIONS
from boundflow.errors import UnsupportedOperation
from boundflow.graph import CapturedGraph

aten = torch.ops.aten

__all__ = ["BoundState", "crown", "AFFINE_OPS", "EMPTY_TOLERANCE"]

# a sub-domain is empty only when a split constraint contradicts a sound bound by more than this
# (relative to the bound's magnitude): a smaller contradiction is rounding noise, never a proof
EMPTY_TOLERANCE = 1e-6

# linear maps with non-negative coefficients (moving, selecting or averaging entries)
POSITIVE_LINEAR = {
    aten.view.default,
    aten._unsafe_view.default,
    aten.reshape.default,
    aten.permute.default,
    aten.transpose.int,
    aten.t.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.expand.default,
    aten.clone.default,
    aten.detach.default,
    aten.alias.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.index_select.default,
    aten.flip.default,
    aten.avg_pool2d.default,
    aten._adaptive_avg_pool2d.default,
    aten.mean.dim,
    aten.sum.dim_IntList,
    aten.constant_pad_nd.default,
    aten._to_copy.default,
}
# ops that are affine in their non-constant tensor operands (jointly, for several operands)
AFFINE_OPS = POSITIVE_LINEAR | {
    aten.cat.default,
    aten.stack.default,
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.add.Scalar,
    aten.sub.Scalar,
    aten.neg.default,
    aten.rsub.Scalar,
    aten.addmm.default,
    aten.mm.default,
    aten.bmm.default,
    aten.mv.default,
    aten.convolution.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.lift_fresh_copy.default,
}
# ops affine when all but one tensor operand is constant
PRODUCT_OPS = {
    aten.mul.Tensor,
    aten.mul.Scalar,
    aten.div.Tensor,
    aten.div.Scalar,
    aten.addmm.default,
    aten.mm.default,
    aten.bmm.default,
    aten.mv.default,
    aten.convolution.default,
}
TUPLE_OPS = {
    aten.native_batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.max_pool2d_with_indices.default,
}


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


def _nonlinear_input(node: fx.Node) -> fx.Node | None:
    if node.target in RELAXATIONS:
        return node.args[0]
    if node.target is aten.max_pool2d_with_indices.default:
        return node.args[0]
    return None


def prepare(
    graph: CapturedGraph,
    x_lo: torch.Tensor,
    x_hi: torch.Tensor,
    refine: bool = True,
    overrides: dict | None = None,
) -> BoundState:
    """Constants, interval bounds of every node, and CROWN bounds (intersected) for every
    input of a nonlinearity, in one forward sweep.  ``overrides``: node name -> ``(lo, hi)``
    extra bounds intersected into that node (ReLU splitting: a sub-domain where a neuron is
    known active has ``lo = 0`` there); they must hold on the sub-domain being bounded.
    Entries with lower > upper mark an empty sub-domain (see :func:`empty_domains`)."""
    state = BoundState(graph, x_lo, x_hi)
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
    env: dict = {x_node: IntervalTensor(x_lo, x_hi, check=False)}
    state.lower[x_node], state.upper[x_node] = x_lo, x_hi
    # nodes that are an affine function of the input through single-operand affine ops: their
    # interval bounds are already exact (an affine image of a box), so CROWN is skipped there
    affine_of_input = {x_node}
    for n in nodes:
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
            if refine and n in state.needs_bounds and n not in affine_of_input:
                c_lo, c_hi = node_bounds(state, n)
                lo, hi = intersect(lo, hi, c_lo, c_hi)
                env[n] = IntervalTensor(lo, hi, check=False)
            if overrides and n.name in overrides:
                o_lo, o_hi = overrides[n.name]
                s_lo, s_hi = lo, hi
                lo, hi = torch.maximum(lo, o_lo), torch.minimum(hi, o_hi)
                # empty only where a split constraint contradicts a sound bound by more than
                # EMPTY_TOLERANCE of its magnitude; a smaller crossing is rounding, never a proof
                scale = 1 + torch.maximum(s_lo.abs(), s_hi.abs()).nan_to_num(posinf=0.0)
                contradiction = (lo - hi) > EMPTY_TOLERANCE * scale
                state.empty = getattr(state, "empty", torch.zeros(lo.shape[0], dtype=torch.bool)) | (
                    contradiction.reshape(lo.shape[0], -1).any(1)
                )
                lo, hi = ordered(lo, hi)  # a rounding crossing: the hull of the crossed pair
                env[n] = IntervalTensor(lo, hi, check=False)
            state.lower[n], state.upper[n] = lo, hi
    return state


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


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
    return getattr(state, "empty", torch.zeros(state.x_lo.shape[0], dtype=torch.bool))


def node_bounds(state: BoundState, node: fx.Node, budget: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds of every entry of ``node`` (identity specification, in chunks of rows so
    that a coefficient tensor has at most about ``budget`` entries)."""
    shape = _shape(state, node)
    b = shape[0]
    n = 1
    for s in shape[1:]:
        n *= s
    widest = max(
        int(torch.tensor(_shape(state, m)[1:]).prod()) if len(_shape(state, m)) > 1 else 1 for m in list(state.lower)
    )
    rows = max(1, budget // max(b * max(widest, n), 1))
    lbs, ubs = [], []
    for start in range(0, n, rows):
        k = min(rows, n - start)
        eye = torch.zeros(k, n, dtype=state.x_lo.dtype)
        eye[torch.arange(k), torch.arange(start, start + k)] = 1
        # batch dimension 1: the identity is the same for every sample; relaxations make the
        # coefficients sample-specific later (broadcasting), so the first products are shared
        eye = eye.reshape(k, 1, *shape[1:])
        lb, ub = backsub(state, node, eye, eye)
        lbs.append(lb)
        ubs.append(ub)
    lb, ub = torch.cat(lbs, 0), torch.cat(ubs, 0)
    return lb.transpose(0, 1).reshape(shape), ub.transpose(0, 1).reshape(shape)


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


def _sum_tail(t: torch.Tensor) -> torch.Tensor:
    """Sum over all dims after (S, B)."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def backsub(state: BoundState, start: fx.Node, lA: torch.Tensor, uA: torch.Tensor):
    """Bounds ``(lb, ub)`` of shape ``(S, B)`` on ``sum(A * start)`` with ``lA`` for the lower
    and ``uA`` for the upper bound (both ``(S, B, *start_shape)``)."""
    nodes = list(state.graph.gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    pending: dict = {start: (lA, uA)}
    s = lA.shape[0]
    b = _shape(state, start)[0]
    lb = torch.zeros(s, b, dtype=lA.dtype)
    ub = torch.zeros(s, b, dtype=lA.dtype)
    x_node = state.graph.input_node
    while pending:
        node = max(pending, key=lambda n: order[n])
        lA, uA = pending.pop(node)
        if node in state.const:
            v = state.const[node]
            lb = lb + _sum_tail(lA * v)
            ub = ub + _sum_tail(uA * v)
            continue
        if node is x_node:
            lo, hi = state.x_lo, state.x_hi
            lb = lb + _sum_tail(lA.clamp(min=0) * lo + lA.clamp(max=0) * hi)
            ub = ub + _sum_tail(uA.clamp(min=0) * hi + uA.clamp(max=0) * lo)
            continue
        target = node.target
        if target is operator.getitem:
            parent, idx = node.args
            if parent.target in TUPLE_OPS and idx == 0:
                if parent.target is aten.max_pool2d_with_indices.default:
                    dl, du = _maxpool_back(state, parent, lA, uA, pending)
                    lb, ub = lb + dl, ub + du
                else:
                    dl, du = _affine_back(state, parent, lA, uA, pending, output_index=0)
                    lb, ub = lb + dl, ub + du
                continue
            raise UnsupportedOperation(f"linear domain: getitem {idx} of {parent.target}")
        if target in RELAXATIONS:
            inp = node.args[0]
            l, u = state.lower[inp], state.upper[inp]
            a_l, b_l, a_u, b_u = RELAXATIONS[target](node, l, u, state.alpha.get((node, start)))
            lA_p, lA_n = lA.clamp(min=0), lA.clamp(max=0)
            uA_p, uA_n = uA.clamp(min=0), uA.clamp(max=0)
            lb = lb + _sum_tail(lA_p * b_l + lA_n * b_u)
            ub = ub + _sum_tail(uA_p * b_u + uA_n * b_l)
            _add(pending, inp, lA_p * a_l + lA_n * a_u, uA_p * a_u + uA_n * a_l)
            continue
        if target in (aten.add.Tensor, aten.sub.Tensor) and _add_const_fast(state, node, lA, uA, pending):
            dl, du = _add_const_fast.bias
            lb, ub = lb + dl, ub + du
            continue
        if target in (aten.view.default, aten._unsafe_view.default, aten.reshape.default) and _view_fast(
            state, node, lA, uA, pending
        ):
            continue
        if target in (aten.addmm.default, aten.mm.default) and _linear_fast(state, node, lA, uA, pending):
            dl, du = _linear_fast.bias
            lb, ub = lb + dl, ub + du
            continue
        if target in AFFINE_OPS or target in PRODUCT_OPS:
            dl, du = _affine_back(state, node, lA, uA, pending)
            lb, ub = lb + dl, ub + du
            continue
        raise UnsupportedOperation(
            f"no linear-relaxation rule for {target} (node {node.name}); method='ibp' supports it"
        )
    return lb, ub


def _add_const_fast(state: BoundState, node: fx.Node, lA, uA, pending) -> bool:
    """``x + c`` / ``x - c`` / ``c - x`` with one variable operand and a constant (no alpha):
    the coefficients pass through (negated for ``c - x``) and ``A * c`` joins the bias."""
    if node.kwargs or len(node.args) != 2:
        return False
    a, c = node.args
    sign = 1.0
    if not (isinstance(a, fx.Node) and a not in state.const):
        if node.target is aten.sub.Tensor:
            sign = -1.0
        a, c = c, a
    if not (isinstance(a, fx.Node) and a not in state.const) or _is_const(state, a):
        return False
    if isinstance(c, fx.Node) and (c not in state.const or c in state.radius):
        return False
    cv = state.const[c] if isinstance(c, fx.Node) else c
    if node.target is aten.sub.Tensor and sign == 1.0:
        cv = -cv
    if tuple(_shape(state, a)) != tuple(_shape(state, node)):
        return False  # broadcasting of the variable: use the generic rule
    if sign == 1.0:
        _add(pending, a, lA, uA)
    else:
        _add(pending, a, -lA, -uA)
    dl, du = _sum_tail(lA * cv), _sum_tail(uA * cv)
    _add_const_fast.bias = (dl, du)
    return True


def _view_fast(state: BoundState, node: fx.Node, lA, uA, pending) -> bool:
    """A batch-first view: reshape the coefficients to the input's shape."""
    x = node.args[0]
    if not isinstance(x, fx.Node) or x in state.const:
        return False
    in_shape, out_shape = _shape(state, x), _shape(state, node)
    if in_shape[0] != out_shape[0] or lA.shape[1] not in (1, out_shape[0]):
        return False
    s = lA.shape[0]
    if lA is uA:
        r = lA.reshape(s, lA.shape[1], *in_shape[1:])
        _add(pending, x, r, r)
    else:
        _add(pending, x, lA.reshape(s, lA.shape[1], *in_shape[1:]), uA.reshape(s, uA.shape[1], *in_shape[1:]))
    return True


def _linear_fast(state: BoundState, node: fx.Node, lA, uA, pending) -> bool:
    """``addmm(b, x, W)`` / ``mm(x, W)`` with constant ``W`` (and ``b``) and variable 2-D ``x``:
    ``A_x = A @ W^T`` directly.  Returns False when the pattern does not apply."""
    if node.target is aten.addmm.default:
        bias, x, w = node.args[:3]
        if node.kwargs or len(node.args) > 3:
            return False
    else:
        x, w = node.args[:2]
        bias = None
    if not isinstance(x, fx.Node) or x in state.const or not _is_const(state, w) or not _is_const(state, bias):
        return False
    if _bounded(state, [w, bias]):
        return False
    wv = state.const[w] if isinstance(w, fx.Node) else w
    if lA is uA:
        ax = lA @ wv.T
        _add(pending, x, ax, ax)
    else:
        both = torch.cat([lA, uA], 0)
        ax = both @ wv.T
        s = lA.shape[0]
        _add(pending, x, ax[:s], ax[s:])
    if bias is not None:
        bv = state.const[bias] if isinstance(bias, fx.Node) else bias
        _linear_fast.bias = (_sum_tail(lA * bv), _sum_tail(uA * bv))
    else:
        z = torch.zeros(lA.shape[0], lA.shape[1], dtype=lA.dtype)
        _linear_fast.bias = (z, z)
    return True


def _affine_back(state: BoundState, node: fx.Node, lA, uA, pending, output_index: int | None = None):
    """Push ``A`` through an op that is affine in its non-constant tensor operands, with the
    op's own vector-Jacobian product (exact for affine maps) and its value at 0 as offset."""
    var_nodes: list[fx.Node] = []

    def collect(a):
        if isinstance(a, fx.Node):
            if a not in state.const and a not in var_nodes:
                var_nodes.append(a)
        elif isinstance(a, (list, tuple)):
            for b in a:
                collect(b)

    collect(node.args)
    collect(list(node.kwargs.values()))

    def occurrences(a) -> int:
        if isinstance(a, fx.Node):
            return int(a not in state.const)
        if isinstance(a, (list, tuple)):
            return sum(occurrences(b) for b in a)
        return 0

    n_var = occurrences(node.args) + occurrences(list(node.kwargs.values()))
    if node.target in (aten.div.Tensor, aten.div.Scalar) and occurrences(node.args[1:]):
        raise UnsupportedOperation(f"linear domain: division by a non-constant operand ({node.name}) is not affine")
    if node.target in PRODUCT_OPS and n_var != 1:
        raise UnsupportedOperation(
            f"linear domain: {node.target} of two non-constant operands (a bilinear term, e.g. bounded "
            "weights) has no linear relaxation yet; use method='ibp'"
        )

    def sub(a, mapping):
        if isinstance(a, fx.Node):
            return mapping[a] if a in mapping else state.const[a]
        if isinstance(a, (list, tuple)):
            return type(a)(sub(b, mapping) for b in a)
        return a

    def f(*vs):
        mapping = dict(zip(var_nodes, vs, strict=True))
        out = node.target(*sub(node.args, mapping), **{k: sub(v, mapping) for k, v in node.kwargs.items()})
        return out[output_index] if output_index is not None else out

    zeros = [torch.zeros(_shape(state, v), dtype=lA.dtype) for v in var_nodes]
    c, vjp_fn = vjp(f, *zeros)
    noise = _weight_noise(state, node, var_nodes, output_index) if _bounded(state, node.args) else None
    s = lA.shape[0]
    full = (s, *c.shape)
    if lA is uA and noise is None:
        grads = vmap(vjp_fn)(lA.expand(full))
        for v, g in zip(var_nodes, grads, strict=True):
            _add(pending, v, g, g)
        d = _sum_tail(lA * c)
        return d, d
    grads = vmap(vjp_fn)(torch.cat([lA.expand(full), uA.expand(full)], 0))
    for v, g in zip(var_nodes, grads, strict=True):
        _add(pending, v, g[:s], g[s:])
    dl, du = _sum_tail(lA * c), _sum_tail(uA * c)
    if noise is not None:
        dl = dl - _sum_tail(lA.abs() * noise)
        du = du + _sum_tail(uA.abs() * noise)
    return dl, du


def _weight_noise(state: BoundState, node: fx.Node, var_nodes, output_index) -> torch.Tensor:
    """Bound on ``|op(x, W, b) - op(x, W_c, b_c)|`` for bounded constants ``W = W_c ± W_r``
    (and ``b``): ``op(|x|_max, W_r, b_r)`` for ops that are sums of products (matrix products,
    convolutions, elementwise products) plus additive terms.  The CROWN coefficient of ``x``
    then uses the centre ``W_c``, and ``|A| * noise`` widens the bound (a sound relaxation of the
    bilinear term ``W x``; tight when the weight radius is small)."""
    if node.target in (aten.native_batch_norm.default, aten._native_batch_norm_legit_no_training.default):
        # y = (x - mean) * invstd * w + b with bounded w, b: deviation <= |x_hat|_max * w_r + b_r
        x, w, b, rm, rv = node.args[:5]
        eps = node.args[-1]
        shape = [1, -1] + [1] * (len(_shape(state, x)) - 2)
        mean = state.const[rm].reshape(shape)
        inv = torch.rsqrt(state.const[rv] + eps).reshape(shape)
        lo, hi = state.lower[x], state.upper[x]
        xhat = torch.maximum((lo - mean).abs(), (hi - mean).abs()) * inv
        out = torch.zeros_like(xhat)
        if isinstance(w, fx.Node) and w in state.radius:
            out = out + xhat * state.radius[w].reshape(shape)
        if isinstance(b, fx.Node) and b in state.radius:
            out = out + state.radius[b].reshape(shape)
        return out
    if node.target not in PRODUCT_OPS and node.target not in (aten.add.Tensor, aten.sub.Tensor):
        raise UnsupportedOperation(f"linear domain: bounded weights in {node.target} are not supported")
    if node.target in (aten.div.Tensor, aten.div.Scalar):
        # x / s with s in [c - r, c + r] not containing 0: |x/s - x/c| <= |x| max|1/s - 1/c|,
        # the maximum at an end point of the divisor's interval (1/s is monotone there)
        x, d = node.args[:2]
        if not (isinstance(d, fx.Node) and d in state.radius) or isinstance(x, fx.Node) and x in state.radius:
            raise UnsupportedOperation(f"linear domain: bounded numerator in division {node.name} is not supported")
        c, r = state.const[d], state.radius[d]
        if ((c - r <= 0) & (c + r >= 0)).any():
            raise UnsupportedOperation(
                f"linear domain: the bounded divisor of {node.name} contains 0; the quotient is unbounded "
                "(use method='ibp')"
            )
        dev = torch.maximum((1 / (c - r) - 1 / c).abs(), (1 / (c + r) - 1 / c).abs())
        return torch.maximum(state.lower[x].abs(), state.upper[x].abs()) * dev

    def sub(a):
        if isinstance(a, fx.Node):
            if a in var_nodes:
                lo, hi = state.lower[a], state.upper[a]
                return torch.maximum(lo.abs(), hi.abs())
            if a in state.radius:
                return state.radius[a]
            return torch.zeros_like(state.const[a])  # exact operand: no deviation
        if isinstance(a, (list, tuple)):
            return type(a)(sub(b) for b in a)
        return a

    if node.target in (aten.add.Tensor, aten.sub.Tensor):
        # a + alpha * b: the deviation of b counts |alpha| times
        scale = (1.0, abs(float(node.kwargs.get("alpha", 1))))
        return sum(
            state.radius[a] * k for a, k in zip(node.args, scale) if isinstance(a, fx.Node) and a in state.radius
        )
    args = sub(node.args)
    # deviations are magnitudes: scalings (addmm's beta and alpha) count with their absolute value
    kwargs = {k: abs(v) if k in ("alpha", "beta") else sub(v) for k, v in node.kwargs.items()}
    if node.target is aten.addmm.default:
        args = [*args[:3], *(abs(v) for v in args[3:])]
    out = node.target(*args, **kwargs)
    return out[output_index] if output_index is not None else out


def deeppoly_pool(l: torch.Tensor, u: torch.Tensor, args: list):
    """Per window: max of the lower bounds, the argmax index of the lower bounds, max of the
    upper bounds, and whether the argmax-l entry's lower bound beats every other upper bound
    of *its own* window (then the pool equals that entry exactly).  Windows may overlap
    (stride < kernel), be padded or dilated, or use ``ceil_mode``: the other entries are read
    from each window's own index list, never from a plane shared between windows."""
    ml, idx = aten.max_pool2d_with_indices.default(l, *args)
    mu, _ = aten.max_pool2d_with_indices.default(u, *args)
    win = pool_index_windows(l.shape, args, l.device)  # (OH, OW, K) flat input positions, -1 = padding
    k = win.shape[-1]
    win = win.reshape(-1, k)  # (O, K)
    u_win = u.flatten(-2)[..., win.clamp(min=0)]  # (..., O, K)
    chosen = idx.flatten(-2).unsqueeze(-1)  # (..., O, 1)
    others = u_win.masked_fill((win < 0) | (win == chosen), -float("inf"))
    mu_other = others.amax(-1).reshape(ml.shape)
    return ml, idx, mu, ml >= mu_other


def _maxpool_back(state: BoundState, node: fx.Node, lA, uA, pending):
    """DeepPoly max pooling: lower ``y >= x[argmax l]``; upper ``y <= x[argmax l]`` where that
    entry's lower bound beats every other upper bound in the window, else ``y <= max u``."""
    inp = node.args[0]
    l, u = state.lower[inp], state.upper[inp]
    ml, idx, mu, exact = deeppoly_pool(l, u, list(node.args[1:]))
    lead = l.shape[:-2]
    hw = l.shape[-2] * l.shape[-1]

    def scatter(a):  # (S, B, C, oh, ow) -> (S, B, C, H, W), coefficient onto the selected entry
        s = a.shape[0]
        out = torch.zeros(s, *lead, hw, dtype=a.dtype)
        index = idx.flatten(-2).unsqueeze(0).expand(s, *idx.flatten(-2).shape)
        out.scatter_add_(-1, index, a.flatten(-2))
        return out.reshape(s, *l.shape)

    lA, uA = lA.expand(lA.shape[0], *ml.shape), uA.expand(uA.shape[0], *ml.shape)
    lA_p, lA_n = lA.clamp(min=0), lA.clamp(max=0)
    uA_p, uA_n = uA.clamp(min=0), uA.clamp(max=0)
    # lower bound: positive coeffs use y >= x_sel; negative use upper (x_sel if exact else const mu)
    l_sel = lA_p + torch.where(exact, lA_n, torch.zeros_like(lA_n))
    l_const = torch.where(exact, torch.zeros_like(lA_n), lA_n) * mu
    u_sel = uA_n + torch.where(exact, uA_p, torch.zeros_like(uA_p))
    u_const = torch.where(exact, torch.zeros_like(uA_p), uA_p) * mu
    _add(pending, inp, scatter(l_sel), scatter(u_sel))
    return _sum_tail(l_const), _sum_tail(u_const)


def spec_coefficients(C, shape, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The starting coefficients ``(S, B or 1, *out)`` for ``C @ y`` (identity without ``C``),
    and ``C`` normalised to ``(B, S, n_out)``."""
    b = shape[0]
    n_out = 1
    for s in shape[1:]:
        n_out *= s
    if C is None:
        return torch.eye(n_out, dtype=dtype).reshape(n_out, 1, *shape[1:]), None
    C = torch.as_tensor(C, dtype=dtype)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(b, *C.shape)
    if C.shape[0] != b or C.shape[-1] != n_out:
        raise ValueError(f"C must have shape (S, {n_out}) or ({b}, S, {n_out}), got {tuple(C.shape)}")
    return C.transpose(0, 1).reshape(C.shape[1], b, *shape[1:]), C


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
    A, C = spec_coefficients(C, shape, x_lo.dtype)
    lb, ub = backsub(state, out_node, A, A)
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
