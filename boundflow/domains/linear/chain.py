"""A feed-forward ReLU network as a chain of dense affine layers, for fast branch and bound.

``z_1 = W_1 x + b_1``, ``z_k = W_k relu(z_{k-1}) + b_k``; the last ``z`` is the output.  Many
verification benchmarks (ACAS Xu, mnist_fc, the RL controllers) are such chains; on them the
bounds of :mod:`boundflow.domains.linear.chain_bounds` are plain batched matrix products, with split constraints
and optimised multipliers, instead of the general graph back-substitution.

:func:`extract_chain` recognises a chain in the model's captured ATen graph: the ReLUs must form
a path (every ReLU input depends on the previous ReLU's output and on nothing else that varies),
and every segment between two ReLUs must be affine *by construction*: each of its nodes that
depends on the segment's start is an op on the affine allow-list of the linear domain
(:data:`~boundflow.domains.linear.ops.AFFINE_OPS`; a product or division only with exactly one
varying operand, divided by a constant), with every other operand a constant.  That structural
rule is the proof that the segment is affine; no test on sample points is trusted for it (a
``Clip`` whose bounds the points never reach, or a nonlinearity next to an output 1e12 larger,
passes any such test).  ``W_k`` is then the segment's Jacobian and ``b_k`` its value at zero,
exact for an affine map up to float64 rounding; the chain is also compared with the model on
random points (a second line of defence, not the proof), and the verifier's onnxruntime
cross-check runs as before any ``unsat``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from boundflow.domains.linear.ops import AFFINE_OPS, PRODUCT_OPS
from boundflow.graph import capture

__all__ = ["Chain", "extract_chain", "segment_is_affine"]

aten = torch.ops.aten

# batch norm in inference mode is affine in its input (its statistics are constants)
_BATCH_NORM = {aten._native_batch_norm_legit_no_training.default, aten.native_batch_norm.default}
_DIVISION = {aten.div.Tensor, aten.div.Scalar}


@dataclass
class Chain:
    """Dense layers ``(W_k, b_k)``; ReLU between consecutive layers, none after the last."""

    weights: list[torch.Tensor]  # W_k: (n_k, n_{k-1})
    biases: list[torch.Tensor]  # b_k: (n_k,)

    @property
    def widths(self) -> list[int]:
        return [w.shape[0] for w in self.weights]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The chain on a batch ``x`` of shape ``(N, n_0)``."""
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if k:
                x = x.clamp(min=0)
            x = x @ w.T + b
        return x

    def with_spec(self, C: torch.Tensor, d: torch.Tensor) -> Chain:
        """The chain whose output is ``C f(x) - d`` (the specification folded into the last layer)."""
        w, b = self.weights[-1], self.biases[-1]
        return Chain(self.weights[:-1] + [C @ w], self.biases[:-1] + [C @ b - d])

    def module(self) -> nn.Sequential:
        """The chain as a float64 ``nn.Sequential`` of ``Linear`` and ``ReLU`` layers."""
        layers: list[nn.Module] = []
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if k:
                layers.append(nn.ReLU())
            lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            layers.append(lin)
        return nn.Sequential(*layers).eval()

    def __getstate__(self):  # the captured graph stays in its process (re-captured on demand)
        return {k: v for k, v in self.__dict__.items() if k not in ("_graph", "_abs")}

    def abs_weights(self) -> list[torch.Tensor]:
        """``|W_k|`` per layer (computed once per chain)."""
        cached = self.__dict__.get("_abs")
        if cached is None:
            cached = self.__dict__["_abs"] = [w.abs() for w in self.weights]
        return cached

    def graph(self):
        """The captured ATen graph of :meth:`module` at batch one (captured once per chain) and,
        per hidden layer, the name of its pre-activation node: what the one network encoder
        (:mod:`boundflow.encode.network`) takes."""
        cached = self.__dict__.get("_graph")
        if cached is None:
            x = torch.zeros(1, self.weights[0].shape[1], dtype=torch.float64, device=self.weights[0].device)
            g = capture(self.module(), x)
            relus = [n for n in g.gm.graph.nodes if n.op == "call_function" and n.target is aten.relu.default]
            names = [n.args[0].name for n in relus]
            if len(names) != len(self.weights) - 1:
                raise AssertionError(f"Chain.graph: {len(names)} ReLUs for {len(self.weights) - 1} hidden layers")
            cached = self.__dict__["_graph"] = (g, names)
        return cached


def _relu_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is aten.relu.default]


def _sources(gm: fx.GraphModule, x_node: fx.Node, relus: set[fx.Node]) -> dict[fx.Node, set[fx.Node]]:
    """Per node, the varying nodes (the input or a ReLU output) it depends on directly, i.e.
    through no other ReLU."""
    src: dict[fx.Node, set[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n is x_node:
            src[n] = {n}
        elif n.op == "placeholder" or n.op == "get_attr":
            src[n] = set()
        else:
            s: set[fx.Node] = set()
            for a in n.all_input_nodes:
                s |= {a} if a in relus else src.get(a, set())
            src[n] = s
    return src


def _varying_operands(node: fx.Node, varying: set[fx.Node]) -> list[int]:
    """Positions (in ``args`` then ``kwargs`` order, lists flattened) of the varying operands."""
    out: list[int] = []
    pos = 0

    def walk(a):
        nonlocal pos
        if isinstance(a, (list, tuple)):
            for b in a:
                walk(b)
            return
        if isinstance(a, fx.Node) and a in varying:
            out.append(pos)
        pos += 1

    walk(node.args)
    walk(list(node.kwargs.values()))
    return out


def segment_is_affine(gm: fx.GraphModule, start: fx.Node, end: fx.Node) -> bool:
    """Whether ``end`` is affine in ``start`` by the graph's structure: every node on a path
    from ``start`` to ``end`` is an affine op of the allow-list whose non-varying operands do
    not depend on ``start``; products (``mul``, matrix products, convolutions) have exactly one
    varying operand and divisions a constant divisor; batch norm is read only through its first
    output.  A node that does not depend on ``start`` is a constant of the segment whatever its
    op.  ``False`` for anything else (the caller then does not treat the segment as affine)."""
    nodes = list(gm.graph.nodes)
    varying: set[fx.Node] = {start}
    for n in nodes[nodes.index(start) + 1 :]:
        if any(a in varying for a in n.all_input_nodes):
            varying.add(n)
    if end not in varying:
        return True  # a constant segment is affine (zero Jacobian)
    # only the nodes that ``end`` depends on matter
    needed: set[fx.Node] = set()
    stack = [end]
    while stack:
        n = stack.pop()
        if n in needed or n not in varying:
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    for n in needed:
        if n is start:
            continue
        if n.op != "call_function":
            return False
        pos = _varying_operands(n, varying)
        if n.target is operator.getitem:
            parent, idx = n.args
            if not (isinstance(parent, fx.Node) and parent.target in _BATCH_NORM and idx == 0):
                return False
            continue
        if n.target in _BATCH_NORM:
            if pos != [0]:  # only the input may vary (not the weights or the statistics)
                return False
            if n.target is aten.native_batch_norm.default and n.args[5] is not False:
                return False  # training mode: batch statistics of the input (not affine)
            for u in n.users:  # read only through its normalised output
                if not (u.target is operator.getitem and u.args[1] == 0):
                    return False
            continue
        if n.target in PRODUCT_OPS:
            if len(pos) != 1:
                return False
            if n.target in _DIVISION and pos[0] != 0:
                return False
            continue
        if n.target not in AFFINE_OPS:
            return False
    return True


class _Segment(fx.Interpreter):
    """Runs the graph with one node's value replaced (the previous ReLU's output, or the input)."""

    def __init__(self, gm, node, value):
        super().__init__(gm, garbage_collect_values=False)
        self.node, self.value = node, value

    def run_node(self, n):
        v = super().run_node(n) if n.op == "placeholder" or n is not self.node else None
        return self.value if n is self.node else v


# a segment whose dense matrix would have more entries than this is not extracted (a large
# convolution as a dense matrix costs more memory and Jacobian time than it saves)
MAX_ENTRIES = 1 << 22
# networks with at most this many inputs (split as input boxes, where the dense chain's box
# bounds pay) may have segments of up to MAX_ENTRIES_FEW_INPUTS entries: 2^23 float64 entries
# are 64 MiB, and the two-level lattice networks' merged 3200 x 1600 layers fit; a CIFAR CNN's
# first convolution (3072 -> 2048, 6.3M entries) stays on the general graph's patches
FEW_INPUTS = 64
MAX_ENTRIES_FEW_INPUTS = 1 << 23


def _jacobian(seg, v0: torch.Tensor, n_out: int) -> torch.Tensor:
    """The Jacobian of ``seg`` at ``v0``, vectorised (``torch.func``: one batched pass over the
    smaller side, instead of one backward pass per output); autograd's row by row where an op
    has no batching rule."""
    try:
        jac = torch.func.jacfwd if len(v0) <= n_out else torch.func.jacrev
        return jac(seg)(v0)
    except Exception:
        return torch.autograd.functional.jacobian(seg, v0)


def extract_chain(model: nn.Module, n_inputs: int, tol: float = 1e-9, max_entries: int | None = None) -> Chain | None:
    """The model ``(N, n_inputs) -> (N, n_out)`` as a :class:`Chain`, or ``None`` if it is not
    a chain of affine segments and ReLUs, if a segment's dense matrix would exceed
    ``max_entries`` entries (default :data:`MAX_ENTRIES`, :data:`MAX_ENTRIES_FEW_INPUTS` for at
    most :data:`FEW_INPUTS` inputs), or if the extracted chain differs from the model by more
    than ``tol`` relative on random points."""
    if max_entries is None:
        max_entries = MAX_ENTRIES_FEW_INPUTS if n_inputs <= FEW_INPUTS else MAX_ENTRIES
    try:
        return _extract(model, n_inputs, tol, max_entries)
    except Exception:  # any graph the extraction does not understand is simply not a chain
        return None


def _extract(model: nn.Module, n_inputs: int, tol: float, max_entries: int) -> Chain | None:
    g = capture(model, torch.zeros(1, n_inputs, dtype=torch.float64, device="cpu"))  # extracted on the host
    gm = g.gm
    nodes = list(gm.graph.nodes)
    x_node = nodes[0]
    out = next(n for n in nodes if n.op == "output").args[0]
    if not isinstance(out, fx.Node):
        return None
    relus = _relu_nodes(gm)
    rset = set(relus)
    src = _sources(gm, x_node, rset)
    path = [x_node] + relus
    # the ReLU inputs and the output each depend on exactly the previous path node
    for k, r in enumerate(relus):
        if src[r.args[0]] != {path[k]}:
            return None
    if src[out] != {path[-1]}:
        return None
    # the only users of a path node lie in its own segment (no skip connections)
    ends = [r.args[0] for r in relus] + [out]
    sizes = [n_inputs] + [int(r.meta["val"].numel()) for r in relus] + [int(out.meta["val"].numel())]
    if any(a * b > max_entries for a, b in zip(sizes[:-1], sizes[1:], strict=False)):
        return None
    # the proof that each segment is affine: its structure (sample points cannot prove it)
    if not all(segment_is_affine(gm, path[k], end) for k, end in enumerate(ends)):
        return None
    weights, biases = [], []
    params = list(g.params)
    for k, end in enumerate(ends):
        start = path[k]
        if k == 0:
            n_in = n_inputs
        else:
            n_in = int(start.meta["val"].numel())

        def seg(v, start=start, end=end):
            interp = _Segment(gm, start, v.reshape(start.meta["val"].shape))
            interp.run(torch.zeros(1, n_inputs, dtype=torch.float64, device="cpu"), *params)
            return interp.env[end].reshape(-1)

        v0 = torch.zeros(n_in, dtype=torch.float64, device="cpu")
        with torch.no_grad():
            b = seg(v0).clone()
        w = _jacobian(seg, v0, len(b))
        if w.dim() != 2:
            return None
        # affine check on random points of two scales
        gen = torch.Generator().manual_seed(k)
        for scale in (1.0, 100.0):
            v = scale * torch.randn(4, n_in, generator=gen, dtype=torch.float64, device="cpu")
            with torch.no_grad():
                ref = torch.stack([seg(vi) for vi in v])
            pred = v @ w.T + b
            if not torch.allclose(pred, ref, rtol=tol, atol=tol * (1 + ref.abs().max())):
                return None
        weights.append(w.detach())
        biases.append(b)
    chain = Chain(weights, biases)
    gen = torch.Generator().manual_seed(len(ends))
    x = torch.randn(16, n_inputs, generator=gen, dtype=torch.float64, device="cpu")
    with torch.no_grad():
        ref = model(x).reshape(16, -1)
    y = chain(x)
    if y.shape != ref.shape or not torch.allclose(y, ref, rtol=tol, atol=tol * (1 + ref.abs().max())):
        return None
    return chain
