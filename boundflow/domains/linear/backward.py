"""Back-substitution: coefficient tensors ``A`` of shape ``(S, B, *node)`` pushed from a node
back to the input, one rule per ATen op in the :data:`BACKWARD` table.

Affine ops take their exact vector-Jacobian product (``torch.func.vjp``, vmapped over ``S``)
with the op's value at 0 as offset, with fast paths for ``x + c``, batch-first views and dense
layers; nonlinearities take their linear relaxation (positive coefficients the lower line for a
lower bound, negative ones the upper line); max pooling takes DeepPoly's window relaxation.
Every rule returns the constant it adds to the lower and upper bound.
"""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.func import vjp, vmap

from boundflow import deadline
from boundflow.domains.linear.joint import JOINT, interval_back, matmul_back
from boundflow.domains.linear.maxpool import maxpool_back
from boundflow.domains.linear.ops import AFFINE_OPS, PRODUCT_OPS, TUPLE_OPS
from boundflow.domains.linear.relaxations import RELAXATIONS
from boundflow.domains.linear.state import (
    BoundState,
    _add,
    _bounded,
    _flat_nodes,
    _is_const,
    _shape,
    _sum_tail,
    relaxation_lines,
)
from boundflow.errors import UnsupportedOperation

aten = torch.ops.aten

__all__ = ["BACKWARD", "backsub", "is_zero", "through_lines", "needs_input_bounds"]


def backsub(state: BoundState, start: fx.Node, lA: torch.Tensor, uA: torch.Tensor, extra: dict | None = None):
    """Bounds ``(lb, ub)`` of shape ``(S, B)`` on ``sum(A * start)`` with ``lA`` for the lower
    and ``uA`` for the upper bound (both ``(S, B, *start_shape)``); ``extra``: more terms
    ``node -> (lA, uA)`` of the same sum (bounded together, as one linear function)."""
    nodes = list(state.graph.gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    pending: dict = {start: (lA, uA)}
    for n, (l_n, u_n) in (extra or {}).items():
        _add(pending, n, l_n, u_n)
    s = lA.shape[0]
    b = _shape(state, start)[0]
    lb = torch.zeros(s, b, dtype=lA.dtype, device=lA.device)
    ub = torch.zeros(s, b, dtype=lA.dtype, device=lA.device)
    x_node = state.graph.input_node
    while pending:
        deadline.check("back-substitution")
        node = max(pending, key=lambda n: order[n])
        lA, uA = pending.pop(node)
        if state.lower_only:  # one set of coefficients: the affine rules compute it once
            uA = lA
        if node in state.record:  # branching scores read these (see branching.py)
            state.record[node] = lA.detach()
        if node in state.const:
            v = state.const[node]
            lb = lb + _sum_tail(lA * v)
            ub = ub + _sum_tail(uA * v)
            continue
        if node is x_node:
            lo, hi = state.x_lo, state.x_hi
            # A_+ lo + A_- hi = A lo + A_- (hi - lo): one pass fewer over A
            lb = lb + _dot_tail(lA, lo) + _dot_tail(lA.clamp(max=0), hi - lo)
            ub = ub + _dot_tail(uA, hi) + _dot_tail(uA.clamp(max=0), lo - hi)
            continue
        rule = BACKWARD.get(node.target)
        if (
            rule is not None
            and node.target is not operator.getitem
            and any(a not in state.const and a is not x_node and a not in state.lower for a in node.all_input_nodes)
        ):
            rule = None  # it reads a varying value without bounds (a mask, an index): no rule applies
        if rule is None:
            if node not in state.lower:
                raise UnsupportedOperation(
                    f"no linear-relaxation rule for {node.target} (node {node.name}) and no interval bounds there"
                )
            rule = interval_back  # the node's own interval bounds: sound for any op

        dl, du = rule(state, node, lA, uA, pending, start)
        lb, ub = lb + dl, ub + du
    return lb, ub


def needs_input_bounds(node: fx.Node) -> bool:
    """Whether back-substitution through ``node`` reads its varying inputs' bounds: a
    relaxation, a two-operand rule or the interval fallback (so those inputs get CROWN bounds)."""
    if node.op != "call_function":
        return False
    return node.target in RELAXATIONS or node.target in JOINT or node.target not in BACKWARD


def _dot_tail(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``_sum_tail(a * v)`` for ``a`` ``(S, B or 1, *shape)`` and ``v`` ``(B, *shape)``, as one
    batched product (no ``(S, B, *shape)`` temporary)."""
    s, b = a.shape[0], v.shape[0]
    a = a.expand(s, b, *a.shape[2:]).reshape(s, b, -1)
    return torch.einsum("sbn,bn->sb", a, v.reshape(b, -1))


def _add_const_fast(state: BoundState, node: fx.Node, lA, uA, pending) -> tuple | None:
    """``x + c`` / ``x - c`` / ``c - x`` with one variable operand and a constant (no alpha):
    the coefficients pass through (negated for ``c - x``) and ``A * c`` joins the bias; ``None``
    when the pattern does not apply."""
    if node.kwargs or len(node.args) != 2:
        return None
    a, c = node.args
    sign = 1.0
    if not (isinstance(a, fx.Node) and a not in state.const):
        if node.target is aten.sub.Tensor:
            sign = -1.0
        a, c = c, a
    if not (isinstance(a, fx.Node) and a not in state.const) or _is_const(state, a):
        return None
    if isinstance(c, fx.Node) and (c not in state.const or c in state.radius):
        return None
    cv = state.const[c] if isinstance(c, fx.Node) else c
    if node.target is aten.sub.Tensor and sign == 1.0:
        cv = -cv
    if tuple(_shape(state, a)) != tuple(_shape(state, node)):
        return None  # broadcasting of the variable: use the generic rule
    if sign == 1.0:
        _add(pending, a, lA, uA)
    else:
        _add(pending, a, -lA, -uA)
    dl, du = _sum_tail(lA * cv), _sum_tail(uA * cv)
    return dl, du


def _view_fast(state: BoundState, node: fx.Node, lA, uA, pending) -> tuple | None:
    """A batch-first view: reshape the coefficients to the input's shape."""
    x = node.args[0]
    if not isinstance(x, fx.Node) or x in state.const:
        return None
    in_shape, out_shape = _shape(state, x), _shape(state, node)
    if in_shape[0] != out_shape[0] or lA.shape[1] not in (1, out_shape[0]):
        return None
    s = lA.shape[0]
    if lA is uA:
        r = lA.reshape(s, lA.shape[1], *in_shape[1:])
        _add(pending, x, r, r)
    else:
        _add(pending, x, lA.reshape(s, lA.shape[1], *in_shape[1:]), uA.reshape(s, uA.shape[1], *in_shape[1:]))
    return 0.0, 0.0


def _linear_fast(state: BoundState, node: fx.Node, lA, uA, pending) -> tuple | None:
    """``addmm(b, x, W)`` / ``mm(x, W)`` with constant ``W`` (and ``b``) and variable 2-D ``x``:
    ``A_x = A @ W^T`` directly.  ``None`` when the pattern does not apply."""
    if node.target is aten.addmm.default:
        bias, x, w = node.args[:3]
        if node.kwargs or len(node.args) > 3:
            return None
    else:
        x, w = node.args[:2]
        bias = None
    if not isinstance(x, fx.Node) or x in state.const or not _is_const(state, w) or not _is_const(state, bias):
        return None
    if _bounded(state, [w, bias]):
        return None
    wv = state.const[w] if isinstance(w, fx.Node) else w
    if lA is uA:
        ax = lA @ wv.T
        _add(pending, x, ax, ax)
    else:  # two products: concatenating first would copy both
        _add(pending, x, lA @ wv.T, uA @ wv.T)
    if bias is not None:
        bv = state.const[bias] if isinstance(bias, fx.Node) else bias
        return _sum_tail(lA * bv), _sum_tail(uA * bv)
    return 0.0, 0.0


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

    zeros = [torch.zeros(_shape(state, v), dtype=lA.dtype, device=lA.device) for v in var_nodes]
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


def _relaxation_back(state: BoundState, node: fx.Node, lA, uA, pending, start):
    """A nonlinearity through its linear relaxation on the input's bounds (alpha-CROWN slopes
    where ``state.alpha`` holds them for this start node)."""
    inp = node.args[0]
    a_l, b_l, a_u, b_u = relaxation_lines(state, node, state.alpha.get((node, start)))
    new_l, dl = through_lines(lA, a_l, b_l, a_u, b_u, _sum_tail)
    if state.lower_only:
        _add(pending, inp, new_l, new_l)
        return dl, dl
    new_u, du = through_lines(uA, a_u, b_u, a_l, b_l, _sum_tail)
    _add(pending, inp, new_l, new_u)
    return dl, du


def through_lines(A: torch.Tensor, a_p, b_p, a_n, b_n, reduce) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients through an elementwise relaxation: positive entries of ``A`` take the line
    ``a_p x + b_p``, negative ones ``a_n x + b_n``.  Returns ``A_+ a_p + A_- a_n`` and
    ``reduce(A_+ b_p + A_- b_n)``, computed as ``A a_p + A_- (a_n - a_p)`` (fewer passes over
    ``A``; the same in exact arithmetic) and with a zero offset skipped (ReLU's lower line)."""
    neg = A.clamp(max=0)
    out = (A * a_p).addcmul_(neg, a_n - a_p)
    zero_p, zero_n = is_zero(b_p), is_zero(b_n)
    const = 0.0
    if not (zero_p and zero_n):
        const = reduce(neg * (b_n if zero_p else b_n - b_p))
    if not zero_p:
        const = const + reduce(A * b_p)
    return out, const


def is_zero(t) -> bool:
    """Whether a tensor or number is zero everywhere."""
    return not bool(t.any()) if isinstance(t, torch.Tensor) else t == 0


def _getitem_back(state: BoundState, node: fx.Node, lA, uA, pending, start):
    """Output 0 of a tuple op: max pooling's values, or batch norm's (affine)."""
    parent, idx = node.args
    if parent.target in TUPLE_OPS and idx == 0:
        if parent.target is aten.max_pool2d_with_indices.default:
            return maxpool_back(state, parent, lA, uA, pending, state.alpha.get((parent, start)))
        return _affine_back(state, parent, lA, uA, pending, output_index=0)
    raise UnsupportedOperation(f"linear domain: getitem {idx} of {parent.target}")


def _affine_rule(state: BoundState, node: fx.Node, lA, uA, pending, start):
    if node.target in PRODUCT_OPS and not _is_const(state, [a for a in node.args if a is not node.args[0]]):
        var = [a for a in _flat_nodes(node.args) if a not in state.const]
        divided = node.target in (aten.div.Tensor, aten.div.Scalar)
        if (len(var) > 1 or divided) and not _bounded(state, node.args):
            if node.target is aten.bmm.default and not divided and len(node.args) == 2:
                return matmul_back(state, node, lA, uA, pending, start)  # attention: McCormick
            # another product of two varying operands or a varying divisor: the node's
            # interval bounds
            return interval_back(state, node, lA, uA, pending, start)
    return _affine_back(state, node, lA, uA, pending)


def _with_fast_path(fast):
    def rule(state: BoundState, node: fx.Node, lA, uA, pending, start):
        out = fast(state, node, lA, uA, pending)
        return out if out is not None else _affine_back(state, node, lA, uA, pending)

    rule.__doc__ = f"{fast.__name__}, else the generic affine rule."
    return rule


# ATen op -> backward rule ``(state, node, lA, uA, pending, start) -> (lower const, upper const)``
BACKWARD: dict = {op: _affine_rule for op in AFFINE_OPS | PRODUCT_OPS}
BACKWARD.update({op: _relaxation_back for op in RELAXATIONS})
BACKWARD[operator.getitem] = _getitem_back
BACKWARD.update(JOINT)
for _op in (aten.add.Tensor, aten.sub.Tensor):
    BACKWARD[_op] = _with_fast_path(_add_const_fast)
for _op in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
    BACKWARD[_op] = _with_fast_path(_view_fast)
for _op in (aten.addmm.default, aten.mm.default):
    BACKWARD[_op] = _with_fast_path(_linear_fast)
