"""MILP / LP encodings of a captured ATen graph, and the ``lp`` / ``milp`` domains.

One program per sample (the graph is captured at batch size 1).  Every node gets variables
whose box is the node's bounds from the linear domain (CROWN intersected with interval), so
big-M constants and McCormick envelopes use the tightest bounds available:

* affine ops (linear, conv, batch norm, pooling averages, adds, concatenation, ...): rows
  ``z = J x + f(0)`` with the Jacobian from ``torch.func.jacrev``; pure re-indexing ops (views,
  permutes, slices) reuse the variables;
* ReLU: the big-M formulation with one binary per unstable neuron (its LP relaxation is the
  triangle relaxation);
* max pooling: ``y >= x_i``, ``y <= x_i + (U - l_i)(1 - d_i)``, ``sum_i d_i = 1`` per window;
* other activations (sigmoid, tanh, exp, log, softplus, leaky ReLU): their sound linear
  relaxation from the linear domain (so ``milp`` is exact only for piecewise-linear networks);
* bounded weights (``IntervalTensor`` parameters): the weights are variables and ``W x`` is a
  sum of bilinear products — exact in ``mibp`` (SCIP), McCormick envelopes in ``milp``/``lp``.

Modes: ``lp`` (binaries relaxed; HiGHS; rigorous dual bound), ``milp`` (HiGHS branch and
bound), ``mibp`` (SCIP, exact bilinear), ``sdp`` (the SDP relaxation with the LP's rows,
:mod:`solvers.sdp`; for small networks).  Results are intersected with the CROWN bounds.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from boundflow.bounds import Bounds
from boundflow.domains.base import DomainBase, apply_output
from boundflow.domains.linear.crown import EMPTY_TOLERANCE, crown, prepare
from boundflow.domains.linear.ops import AFFINE_OPS, PRODUCT_OPS, REINDEX_OPS
from boundflow.domains.linear.relaxations import RELAXATIONS
from boundflow.domains.linear.state import BoundState, _flat_nodes, intersect
from boundflow.errors import UnsupportedOperation
from boundflow.graph import capture
from solvers.program import Program

aten = torch.ops.aten

__all__ = [
    "ENCODE",
    "EmptyDomain",
    "ForwardVars",
    "encode",
    "encode_forward",
    "margin_program",
    "network_bounds",
    "SolverDomain",
]

SOLVER_MODES = ("lp", "milp", "mibp", "sdp")
_BILINEAR = {aten.mm.default, aten.addmm.default, aten.mul.Tensor, aten.mv.default}


class _Encoder:
    """``program``: add to this program (default a new one); ``weights``: variables already in it
    for bounded-weight nodes (shared between samples); ``indicators``: record, per ReLU node,
    variables equal to ``1[x > 0]`` where the sign is known and a binary where it is not."""

    def __init__(self, state: BoundState, program: Program | None = None, weights=None, indicators: bool = False):
        self.state = state
        self.p = program if program is not None else Program()
        self.vars: dict[fx.Node, np.ndarray] = dict(weights or {})
        self.indicators: dict[fx.Node, np.ndarray] | None = {} if indicators else None
        # the MILP is the network exactly (no relaxed activation, no bilinear product)
        self.exact = True

    def bounds_of(self, node) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.state.lower[node], self.state.upper[node]
        return lo.double().numpy(), hi.double().numpy()

    def new(self, node) -> np.ndarray:
        lo, hi = self.bounds_of(node)
        return self.p.var(lo, hi)

    def weight_vars(self, node) -> np.ndarray:
        """Variables for a bounded constant (centre +- radius), created once; a rearrangement of
        a bounded constant (e.g. the transposed weight of a linear layer) rearranges its
        variables, so every use of a weight is the same variables."""
        if node not in self.vars:
            parent = node.args[0] if node.op == "call_function" and node.target in REINDEX_OPS else None
            if isinstance(parent, fx.Node) and parent in self.state.radius:
                ids = torch.from_numpy(self.weight_vars(parent))
                rest = [self.state.const.get(a, a) if isinstance(a, fx.Node) else a for a in node.args[1:]]
                self.vars[node] = node.target(ids, *rest, **node.kwargs).contiguous().numpy()
            else:
                c, r = self.state.const[node].double(), self.state.radius[node].double()
                self.vars[node] = self.p.var((c - r).numpy(), (c + r).numpy())
        return self.vars[node]

    def operand(self, a):
        """Variable indices for a variable node or a bounded constant, else ``None``."""
        if isinstance(a, fx.Node):
            if a in self.vars:
                return self.vars[a]
            if a in self.state.radius:
                return self.weight_vars(a)
        return None

    def is_var(self, a) -> bool:
        return isinstance(a, fx.Node) and (a in self.vars or a in self.state.radius)

    # -- ops ---------------------------------------------------------------------------------
    def affine(self, node: fx.Node, head: fx.Node | None = None) -> np.ndarray:
        """Rows ``z = J x + f(0)``; ``head``: the ``getitem(node, 0)`` holding the bounds of a
        tuple-valued op (batch norm)."""
        var_nodes = [a for a in _flat_nodes(node.args) if self.is_var(a)]
        var_nodes = list(dict.fromkeys(var_nodes))
        shapes = [tuple(self.operand(a).shape) for a in var_nodes]

        def f(*vals):
            env = dict(zip(var_nodes, vals))

            def sub(a):
                if isinstance(a, fx.Node):
                    return env[a] if a in env else self.state.const[a]
                if isinstance(a, (list, tuple)):
                    return type(a)(sub(b) for b in a)
                return a

            out = node.target(*sub(node.args), **sub(node.kwargs))
            return out[0] if isinstance(out, tuple) else out

        zeros = [torch.zeros(s, dtype=torch.float64) for s in shapes]
        with torch.no_grad():
            const = f(*zeros).double()
        jac = torch.func.jacrev(f, argnums=tuple(range(len(zeros))))(*zeros)
        out = self.new(head if head is not None else node)
        n = const.numel()
        terms = [(self.operand(a), J.reshape(n, -1).double().numpy()) for a, J in zip(var_nodes, jac, strict=True)]
        self.p.affine_eq(out.ravel(), terms, const.reshape(-1).numpy())
        return out

    def bilinear(self, node: fx.Node) -> np.ndarray:
        self.exact = False
        t = node.target
        args = list(node.args)
        bias = None
        if t is aten.addmm.default:
            bias, a, b = args[0], args[1], args[2]
            if node.kwargs:
                raise UnsupportedOperation(f"solver encoding: addmm with {node.kwargs} (node {node.name})")
        else:
            a, b = args[0], args[1]
        A = self.operand(a) if self.is_var(a) else None
        Bv = self.operand(b) if self.is_var(b) else None
        if A is None or Bv is None:
            raise UnsupportedOperation(f"solver encoding: {t} at node {node.name} is not bilinear in two variables")
        if t is aten.mul.Tensor:
            A, Bv = np.broadcast_arrays(A, Bv)
            z = self.p.product(A, Bv)
            out = self.new(node)
            self.p.affine_eq(out.ravel(), [(z.ravel(), 1.0)], 0.0)
            return out
        if t is aten.mv.default:
            Bv = Bv[:, None]
        # (m, k) @ (k, n): products A[i, l] * B[l, j]
        m_, k = A.shape
        n_ = Bv.shape[1]
        prods = self.p.product(A[:, :, None], Bv[None, :, :])  # (m, k, n)
        out = self.new(node).reshape(m_, n_)
        rows = [np.arange(m_ * n_), np.repeat(np.arange(m_ * n_), k)]
        cols = [out.ravel(), prods.transpose(0, 2, 1).reshape(-1)]
        vals = [np.ones(m_ * n_), -np.ones(m_ * n_ * k)]
        rhs = np.zeros(m_ * n_)
        if bias is not None:
            bv = self.operand(bias)
            if bv is not None:
                bv = np.broadcast_to(bv, (m_, n_)).ravel()
                rows.append(np.arange(m_ * n_))
                cols.append(bv)
                vals.append(-np.ones(m_ * n_))
            else:
                rhs = np.broadcast_to(self.state.const[bias].double().numpy(), (m_, n_)).ravel().copy()
        self.p.rows(np.concatenate(rows), np.concatenate(cols), np.concatenate(vals), rhs, rhs)
        return out.reshape(self.bounds_of(node)[0].shape)

    def relu(self, node: fx.Node) -> np.ndarray:
        x = self.operand(node.args[0])
        lo, hi = self.bounds_of(node.args[0])
        out = np.empty(x.shape, dtype=np.int64)
        ind = np.empty(x.shape, dtype=np.int64)
        xf, of, af, lf, hf = x.ravel(), out.reshape(-1), ind.reshape(-1), lo.ravel(), hi.ravel()
        record = self.indicators is not None
        one = None
        for j in range(xf.size):
            # with indicators, x in [0, hi] keeps a binary: 1[x > 0] is 0 at x = 0
            if lf[j] > 0 or (lf[j] >= 0 and not record):
                of[j] = xf[j]
                if record:
                    one = int(self.p.var(1.0, 1.0)) if one is None else one
                    af[j] = one
            elif hf[j] <= 0:
                of[j] = af[j] = self.p.var(0.0, 0.0)
            else:
                of[j], af[j] = self.p.relu(int(xf[j]), float(lf[j]), float(hf[j]))
        if record:
            self.indicators[node] = ind
        return out

    def relaxed(self, node: fx.Node) -> np.ndarray:
        self.exact = False
        x = self.operand(node.args[0])
        lo_t, hi_t = self.state.lower[node.args[0]], self.state.upper[node.args[0]]
        a_l, b_l, a_u, b_u = (t.double().numpy().ravel() for t in RELAXATIONS[node.target](node, lo_t, hi_t))
        y = self.new(node).ravel()
        n = y.size
        pad = 1e-12 * (1 + np.abs(b_l) + np.abs(b_u))
        r = np.concatenate([np.arange(n), np.arange(n)])
        self.p.rows(
            r, np.concatenate([y, x.ravel()]), np.concatenate([np.ones(n), -a_l]), b_l - pad, np.full(n, np.inf)
        )
        self.p.rows(
            r, np.concatenate([y, x.ravel()]), np.concatenate([np.ones(n), -a_u]), np.full(n, -np.inf), b_u + pad
        )
        return y.reshape(x.shape)

    def maxpool(self, node: fx.Node, head: fx.Node) -> np.ndarray:
        """``head`` = ``getitem(node, 0)``, the pooled values (its bounds are in the state)."""
        inp = node.args[0]
        x = self.operand(inp)
        lo, hi = self.bounds_of(inp)
        args = list(node.args[1:]) + [None] * (5 - len(node.args[1:]))
        kernel, stride, padding, dilation, ceil = args
        stride = stride or kernel
        padding = padding or [0, 0]
        dilation = dilation or [1, 1]
        if ceil:
            raise UnsupportedOperation(f"solver encoding: max_pool2d with ceil_mode (node {node.name})")
        idx = torch.from_numpy(x.astype(np.float64)).reshape(-1, *x.shape[-2:]).unsqueeze(1)
        idx = F.pad(idx, (padding[1], padding[1], padding[0], padding[0]), value=-1.0)
        win = F.unfold(idx, kernel, dilation=dilation, stride=stride)  # (C, K, L)
        win = win.long().numpy()
        out_lo, out_hi = self.bounds_of(head)
        y = self.p.var(out_lo, out_hi).ravel()
        lo_all, hi_all = np.asarray(self.p.lower), np.asarray(self.p.upper)
        k = 0
        for c in range(win.shape[0]):
            for w in range(win.shape[2]):
                members = [int(v) for v in win[c, :, w] if v >= 0]
                yi = int(y[k])
                k += 1
                U = max(hi_all[m] for m in members)
                live = [m for m in members if hi_all[m] >= max(lo_all[q] for q in members)]
                if len(live) == 1:
                    self.p.rows([0, 0], [yi, live[0]], [1.0, -1.0], [0.0], [0.0])
                    continue
                d = self.p.binary(len(live))
                for m, dm in zip(live, d.tolist()):
                    # y >= x_m ;  y <= x_m + (U - l_m)(1 - d_m)
                    self.p.rows([0, 0], [yi, m], [1.0, -1.0], [0.0], [np.inf])
                    self.p.rows([0, 0, 0], [yi, m, dm], [1.0, -1.0, U - lo_all[m]], [-np.inf], [U - lo_all[m]])
                self.p.rows(np.zeros(len(live)), d, np.ones(len(live)), [1.0], [1.0])
        return y.reshape(out_lo.shape)

    def run(self) -> np.ndarray:
        graph = self.state.graph
        nodes = list(graph.gm.graph.nodes)
        x_node = next(n for n in nodes if n.op == "placeholder")
        self.vars[x_node] = self.new(x_node)
        self.deferred: set = set()  # max pooling and batch norm: encoded at their getitem(., 0)
        for n in nodes:
            if n.op == "output":
                return self.operand(n.args[0])
            if n.op != "call_function" or n in self.state.const or not n.users:
                continue  # constants and unused values (e.g. max-pool indices) need no variables
            rule = ENCODE.get(n.target)
            out = rule(self, n, [a for a in _flat_nodes(n.args) if self.is_var(a)]) if rule else _NO_RULE
            if out is _NO_RULE:
                raise UnsupportedOperation(
                    f"solver encoding (lp/milp/mibp): node {n.name} calls {n.target}, which has no encoding; "
                    "use method='crown' or 'ibp' for this model"
                )
            if out is not None:
                self.vars[n] = out
        raise RuntimeError("graph without output")


_BN = (aten._native_batch_norm_legit_no_training.default, aten.native_batch_norm.default)
_NO_RULE = object()


def _is_bn(n: fx.Node) -> bool:
    return n.target in _BN


def _enc_affine(enc: _Encoder, n: fx.Node, var_args):
    """Rows ``z = J x + f(0)``; not for products with a bounded weight (see ``_enc_bilinear``)."""
    if any(a in enc.state.radius for a in var_args):
        return _NO_RULE
    return enc.affine(n)


def _enc_reindex(enc: _Encoder, n: fx.Node, var_args):
    """Ops that only move entries: applied to the tensor of variable indices."""
    if len(var_args) == 1 and var_args[0] is n.args[0]:
        ids = torch.from_numpy(enc.operand(n.args[0]))
        rest = [enc.state.const.get(a, a) if isinstance(a, fx.Node) else a for a in n.args[1:]]
        return n.target(ids, *rest, **n.kwargs).numpy()
    return _enc_affine(enc, n, var_args)


def _enc_bilinear(enc: _Encoder, n: fx.Node, var_args):
    """Products of two variables (bounded weights): bilinear terms; else affine."""
    if len(set(var_args) - ({n.args[0]} if n.target is aten.addmm.default else set())) == 2:
        return enc.bilinear(n)
    return _enc_affine(enc, n, var_args)


def _enc_defer(enc: _Encoder, n: fx.Node, var_args):
    enc.deferred.add(n)
    return None


def _enc_getitem(enc: _Encoder, n: fx.Node, var_args):
    parent, idx = n.args
    if idx != 0:
        return _NO_RULE
    if parent in enc.deferred:
        return enc.affine(parent, n) if _is_bn(parent) else enc.maxpool(parent, n)
    if parent in enc.vars:
        return enc.vars[parent]
    return _NO_RULE


# ATen op -> encoding rule ``(encoder, node, variable operands) -> variable indices`` (``None``:
# deferred to the node's getitem; ``_NO_RULE``: not encodable here)
ENCODE: dict = {op: _enc_affine for op in AFFINE_OPS | PRODUCT_OPS}
ENCODE.update({op: _enc_reindex for op in REINDEX_OPS})
ENCODE.update({op: _enc_bilinear for op in _BILINEAR})
ENCODE[aten._to_copy.default] = lambda enc, n, var_args: enc.operand(n.args[0])
ENCODE.update({op: (lambda enc, n, var_args: enc.relaxed(n)) for op in RELAXATIONS})
ENCODE[aten.relu.default] = lambda enc, n, var_args: enc.relu(n)
ENCODE.update({op: _enc_defer for op in (*_BN, aten.max_pool2d_with_indices.default)})
ENCODE[operator.getitem] = _enc_getitem


def encode(graph, state: BoundState, *, with_exact: bool = False):
    """The program of one sample (``state`` from :func:`boundflow.domains.linear.crown.prepare`
    on a batch of one) and the variables of the output node (without the batch dimension);
    with ``with_exact`` also whether the mixed-integer program is the network exactly."""
    if state.x_lo.shape[0] != 1:
        raise ValueError("encode: the state must be for a batch of one sample")
    enc = _Encoder(state)
    out = enc.run()
    if with_exact:
        return enc.p, out.reshape(-1), enc.exact
    return enc.p, out.reshape(-1)


@dataclass
class ForwardVars:
    """The variables of one sample's forward pass (flat, without the batch dimension): the
    input, the output, and per ReLU node in graph order ``(pre-activation, activation,
    indicator)`` with ``indicator = 1[pre-activation > 0]`` (a binary where the sign is open)."""

    input: np.ndarray
    output: np.ndarray
    relus: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    exact: bool


def encode_forward(graph, state: BoundState, program: Program, weights: Mapping[str, np.ndarray]) -> ForwardVars:
    """Add one sample's forward pass through ``graph`` to ``program``: the graph captured with
    bounded parameters (``IntervalTensor`` values in :func:`boundflow.graph.capture`'s
    ``params``), ``state`` its bounds over the sample's box (:func:`prepare` at batch one, not
    sparse) and ``weights`` the program's variables of those parameters by name (their boxes
    must lie inside the captured ones; a parameter captured as a point stays a constant), shared
    by every sample added this way.  Every variable
    other than the weights is boxed by the state's sound bounds; products of two variables are
    bilinear terms (exact in ``mibp``, McCormick in ``milp``/``lp``), ReLUs big-M with their
    indicators, so a point of the sample's box and parameter box satisfies the program with
    every variable at its value in the network."""
    if state.x_lo.shape[0] != 1:
        raise ValueError("encode_forward: the state must be for a batch of one sample")
    placeholders = [n for n in graph.gm.graph.nodes if n.op == "placeholder"]
    by_name = dict(zip(graph.param_names, placeholders[1:], strict=True))
    unknown = sorted(set(weights) - set(by_name))
    if unknown:
        raise KeyError(f"encode_forward: {', '.join(unknown)} not parameters of the captured graph")
    # a parameter captured as a point is a constant of the graph (its variables, boxed inside
    # the captured box, are that point too)
    bounded = {by_name[n]: v for n, v in weights.items() if by_name[n] in state.radius}
    enc = _Encoder(state, program, bounded, indicators=True)
    out = enc.run().reshape(-1)
    relus = [
        (enc.operand(n.args[0]).reshape(-1), enc.vars[n].reshape(-1), ind.reshape(-1))
        for n, ind in enc.indicators.items()
    ]
    return ForwardVars(enc.vars[placeholders[0]].reshape(-1), out, relus, enc.exact)


class EmptyDomain(Exception):
    """The node ranges given to :func:`margin_program` contradict sound bounds: no point of the
    box lies in the sub-domain."""


def margin_program(graph, lower: torch.Tensor, upper: torch.Tensor, C, d=None, node_ranges: Mapping | None = None):
    """The exact leaf of a branch-and-bound search as one program: every node of ``graph``
    (captured at batch one) gets variables within its CROWN bounds over ``[lower, upper]``
    (shape ``(1, ...)``), each node named in ``node_ranges`` is further restricted to its
    ``(lower, upper)`` (node-shaped with or without the batch dimension; ``±inf`` where free: the
    sub-domain's splits), and a variable ``t >= m_s`` bounds every margin ``m = C y - d`` of the
    graph's output ``y``.  A point of the sub-domain violates the property (every margin <= 0)
    only if ``min t <= 0``, so a rigorous dual bound ``> 0`` of ``min t`` proves the sub-domain.

    Returns ``(program, input variables (flat), t, exact)``; ``exact``: the program is the
    network on the sub-domain exactly (piecewise-linear ops only), so an optimal ``t <= 0`` is
    attained.  Raises :class:`EmptyDomain` when the ranges contradict the CROWN bounds beyond
    rounding (the sub-domain is empty), ``ValueError`` when a bound is not finite (a big-M
    encoding needs finite bounds)."""
    lower = torch.as_tensor(lower, dtype=torch.float64)
    upper = torch.as_tensor(upper, dtype=torch.float64)
    state = prepare(graph, lower, upper, sparse=False)
    by_name = {n.name: n for n in graph.gm.graph.nodes}
    for name, (lo_r, hi_r) in (node_ranges or {}).items():
        node = by_name[name]
        l0, u0 = state.lower[node], state.upper[node]
        lo = torch.maximum(l0, torch.as_tensor(lo_r, dtype=l0.dtype).reshape(l0.shape))
        hi = torch.minimum(u0, torch.as_tensor(hi_r, dtype=u0.dtype).reshape(u0.shape))
        scale = 1 + torch.maximum(lo.abs(), hi.abs()).nan_to_num(posinf=0.0)
        if bool(((lo - hi) > EMPTY_TOLERANCE * scale).any()):
            raise EmptyDomain(f"margin_program: the range of node {name} contradicts its sound bounds")
        state.lower[node], state.upper[node] = torch.minimum(lo, hi), torch.maximum(lo, hi)
    enc = _Encoder(state)
    out = enc.run().reshape(-1)
    x_node = next(n for n in graph.gm.graph.nodes if n.op == "placeholder")
    out_node = next(n for n in graph.gm.graph.nodes if n.op == "output").args[0]
    y_lo, y_hi = (t.double().reshape(-1).numpy() for t in (state.lower[out_node], state.upper[out_node]))
    rows = torch.as_tensor(C, dtype=torch.float64).reshape(-1, len(out)).numpy()
    dv = np.zeros(len(rows)) if d is None else torch.as_tensor(d, dtype=torch.float64).reshape(-1).numpy()
    dv = np.broadcast_to(dv, (len(rows),))
    m_lo = np.clip(rows, 0, None) @ y_lo + np.clip(rows, None, 0) @ y_hi - dv
    m_hi = np.clip(rows, 0, None) @ y_hi + np.clip(rows, None, 0) @ y_lo - dv
    p = enc.p
    t = int(p.var(float(m_lo.max()), float(max(m_hi.max(), m_lo.max()))))
    for s, r in enumerate(rows):  # t - C_s y >= -d_s
        nz = np.nonzero(r)[0]
        p.rows(np.zeros(len(nz) + 1), np.r_[t, out[nz]], np.r_[1.0, -r[nz]], [-dv[s]], [np.inf])
    return p, enc.vars[x_node].reshape(-1), t, enc.exact


def network_bounds(
    model: nn.Module,
    x_lower: torch.Tensor,
    x_upper: torch.Tensor,
    mode: str = "milp",
    params: Mapping[str, torch.Tensor] | None = None,
    C: torch.Tensor | None = None,
    *,
    time_limit: float | None = None,
    executor=None,
    return_exact: bool = False,
    backend: str | None = None,
    max_lifted: int | None = None,
):
    """Bounds on ``model(x)`` (or ``C @ model(x)``, shape ``(B, S)``) over the box, from the
    ``mode`` program of each sample: ``lp``, ``milp`` (exact for piecewise-linear networks with
    exact weights, when solved within ``time_limit``) or ``mibp`` (exact bilinear weights,
    SCIP).  Never looser than CROWN.  ``time_limit``: seconds per solve (a stopped solve gives
    its proven bound); ``executor``: see :mod:`solvers.executor`; ``backend``: the solver
    back end (:data:`solvers.BACKENDS`; default HiGHS, SCIP for ``mibp``, cvxpy for ``sdp``);
    ``max_lifted``: ``sdp`` refuses (``UnsupportedOperation``, before any solve) a sample whose
    program lifts more variables (default :data:`solvers.sdp.MAX_LIFTED`).

    With ``return_exact``, also a boolean tensor (shape of the bounds): both bounds of that
    entry are the optimum (up to the solver's relative gap, 1e-4) — the mode is ``milp`` or
    ``mibp``, the program is the network exactly (``milp``: no relaxed activation and no
    bounded weight), and both solves reported optimality."""
    if mode not in SOLVER_MODES:
        raise ValueError(f"network_bounds: unknown mode {mode!r}; choose from {', '.join(SOLVER_MODES)}")
    from solvers.executor import minimize_all

    x_lower = torch.as_tensor(x_lower, dtype=torch.float64)
    x_upper = torch.as_tensor(x_upper, dtype=torch.float64)
    b = x_lower.shape[0]
    tasks, c_lb, c_ub, n_rows, out_shape, exact_programs = [], [], [], None, None, []
    for i in range(b):
        lo, hi = x_lower[i : i + 1], x_upper[i : i + 1]
        g = capture(model, (lo + hi) / 2, params)
        state = prepare(g, lo, hi, sparse=False)  # every box CROWN-tight: the program's big-M and ranges
        Ci = None
        if C is not None:
            Ci = C if C.dim() == 2 else C[i : i + 1]
        lb, ub, _ = crown(g, lo, hi, Ci, state=state)
        c_lb.append(lb[0])
        c_ub.append(ub[0])
        program, out, is_exact = encode(g, state, with_exact=True)
        if mode == "sdp":
            _check_sdp_size(program, i, max_lifted)
        exact_programs.append((is_exact and mode == "milp") or mode == "mibp")
        out_node = next(n for n in g.gm.graph.nodes if n.op == "output").args[0]
        out_shape = tuple(state.lower[out_node].shape[1:]) if out_node in state.lower else (len(out),)
        rows = np.eye(len(out)) if Ci is None else Ci.reshape(-1, len(out)).double().numpy()
        n_rows = rows.shape[0]
        objs = []
        for r in rows:
            nz = np.nonzero(r)[0]
            objs.append((out[nz], r[nz]))
            objs.append((out[nz], -r[nz]))
        tasks.append((program, objs))
    results = minimize_all(tasks, mode, executor, time_limit, backend=backend)
    lower = torch.tensor([[o.bound for o in r[0::2]] for r in results], dtype=torch.float64)
    upper = torch.tensor([[-o.bound for o in r[1::2]] for r in results], dtype=torch.float64)
    lower, upper = intersect(lower, upper, torch.stack(c_lb), torch.stack(c_ub))
    assert lower.shape == (b, n_rows)
    exact = torch.tensor(
        [
            [exact_programs[i] and lo.status.lower() == "optimal" and up.status.lower() == "optimal"
             for lo, up in zip(r[0::2], r[1::2])]
            for i, r in enumerate(results)
        ],
        dtype=torch.bool,
    )  # fmt: skip
    if C is None:
        lower, upper, exact = (t.reshape(b, *out_shape) for t in (lower, upper, exact))
    return (lower, upper, exact) if return_exact else (lower, upper)


def _check_sdp_size(program: Program, sample: int, limit: int | None) -> None:
    """Refuse, before any solve, a program too large for the SDP relaxation."""
    from solvers.sdp import MAX_LIFTED, lifted_size

    limit = MAX_LIFTED if limit is None else limit
    n = lifted_size(program)
    if n > limit:
        raise UnsupportedOperation(
            f"sdp: sample {sample}'s program lifts {n} variables (inputs, unstable ReLUs, ...); the SDP "
            f"relaxation is for small networks (at most {limit}); use method='lp' or 'crown'"
        )


class SolverPrepared:
    """A model bound to the ``lp`` / ``milp`` / ``mibp`` programs (one per sample and query)."""

    def __init__(self, domain: SolverDomain, model: nn.Module, params=None):
        self.domain, self.model, self.params = domain, model, params

    def bounds(self, spec, output=None) -> Bounds:
        """Sound bounds over ``spec`` (a box; a :class:`~boundflow.specs.LinearSpec` through its
        bounding box); ``Bounds.exact`` marks entries whose both bounds are proven optima."""
        box = spec.box()
        d = self.domain
        C = None if output is None else output.C
        device = box.lower.device
        model, params, x_lo, x_hi = self.model, self.params, box.lower, box.upper
        if device.type != "cpu":  # the programs are built and solved on the host
            model, params = self._on_host()
            x_lo, x_hi, C = x_lo.cpu(), x_hi.cpu(), (None if C is None else C.cpu())
        lo, hi, exact = network_bounds(
            model, x_lo, x_hi, d.name, params, C,
            time_limit=d.time_limit, executor=d.executor, return_exact=True, backend=d.backend,
        )  # fmt: skip
        lo, hi = lo.to(device), hi.to(device)
        res = apply_output(lo, hi, output)
        res.exact = exact if exact is None else exact.to(device)
        return res

    def _on_host(self):
        """A CPU copy of the model and the parameters (made once)."""
        if not hasattr(self, "_host"):
            import copy

            from boundflow.domains.interval.tensor import IntervalTensor, lohi

            def host(t):
                return IntervalTensor(*(v.cpu() for v in lohi(t))) if isinstance(t, IntervalTensor) else t.cpu()

            params = None if self.params is None else {k: host(v) for k, v in self.params.items()}
            self._host = (copy.deepcopy(self.model).cpu(), params)
        return self._host


class SolverDomain(DomainBase):
    """``method="lp"`` / ``"milp"`` / ``"mibp"`` / ``"sdp"`` behind the common domain interface.
    ``time_limit``: seconds per solve (a stopped solve contributes its proven bound);
    ``executor``: :func:`solvers.make_executor`; ``backend``: :data:`solvers.BACKENDS`."""

    def __init__(self, name: str, time_limit: float | None = None, executor=None, backend: str | None = None):
        if name not in SOLVER_MODES:
            raise ValueError(f"SolverDomain: unknown mode {name!r}; choose from {', '.join(SOLVER_MODES)}")
        self.name, self.time_limit, self.executor, self.backend = name, time_limit, executor, backend

    def prepare(self, model: nn.Module, params=None) -> SolverPrepared:
        return SolverPrepared(self, model, params)
