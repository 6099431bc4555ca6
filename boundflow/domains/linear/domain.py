"""``crown``, ``alpha-crown`` and ``forward`` behind the common domain interface.

:class:`LinearPrepared` captures the model's ATen graph once per batch size and answers many
queries; it also exposes what ReLU branch and bound needs: the names of the nodes that can be
split (:meth:`LinearPrepared.split_nodes`) and ``splits`` — extra bounds on those nodes that
hold on the sub-domain being bounded — with the intermediate bounds and the sub-domains proved
empty in the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from boundflow.bounds import Bounds
from boundflow.domains.base import DomainBase, apply_output
from boundflow.domains.linear.alpha import alpha_crown
from boundflow.domains.linear.branching import branch_scores
from boundflow.domains.linear.crown import crown, empty_domains, forward_pays, intersect, prepare
from boundflow.domains.linear.relaxations import S_SHAPED
from boundflow.errors import UnsupportedOperation
from boundflow.graph import CapturedGraph, capture
from boundflow.specs import InputSpec, LinearSpec, OutputSpec

__all__ = ["CrownDomain", "AlphaCrownDomain", "ForwardDomain", "LinearPrepared", "alpha_crown"]


def _out_shape(g: CapturedGraph, lb: torch.Tensor) -> tuple[int, ...]:
    out_val = next(n for n in g.gm.graph.nodes if n.op == "output").args[0].meta.get("val")
    return tuple(out_val.shape) if out_val is not None else tuple(lb.shape)


class LinearPrepared:
    """A model bound to a linear domain; graphs are captured per (padded) batch size and reused."""

    # branch and bound's look-ahead (children's bounds without recomputing anything) is not
    # cheaper than a query here (the dense chain specialisation offers it)
    cheap_lookahead = False

    def __init__(self, domain, model: nn.Module, params: Mapping[str, torch.Tensor] | None = None, pad: bool = True):
        self.domain, self.model, self.pad = domain, model, pad
        self.params = dict(params) if params else None
        self._graphs: dict[int, CapturedGraph] = {}
        # LinearSpec queries: one prepared lifted model per slope shape, its graph captured once
        self._lifted: dict[tuple, LinearPrepared] = {}

    def graph(self, example: torch.Tensor, values: Mapping[str, torch.Tensor] | None = None) -> CapturedGraph:
        """The captured graph for inputs shaped like ``example`` (cached by shape); ``values``:
        parameter or buffer values by name that replace the captured ones in the returned copy
        (the cached graph is not changed, so concurrent queries do not see each other's)."""
        key = tuple(example.shape)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = capture(self.model, example, self.params)
        if values:
            vals = [values.get(n, v) for n, v in zip(g.param_names, g.params, strict=True)]
            g = dataclasses.replace(g, params=vals)
        return g

    def split_nodes(self, batch: int, like: torch.Tensor, general: bool = False) -> list[str]:
        """Names of the ReLU inputs of the graph for a batch of ``batch`` inputs shaped like
        ``like`` (one sample): the nodes whose sign splits help.  ``general``: also the inputs
        of sigmoid and tanh, whose input range a search may split (GenBaB); ``splits`` may
        constrain any node."""
        g = self.graph(like[None].expand(batch, *like.shape))
        kinds = (torch.ops.aten.relu.default, *(S_SHAPED if general else ()))
        names = [n.args[0].name for n in g.gm.graph.nodes if n.op == "call_function" and n.target in kinds]
        return list(dict.fromkeys(names))

    def node_shapes(self, batch: int, like: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Node name -> shape (batch first) in the graph for ``batch`` inputs shaped like ``like``."""
        g = self.graph(like[None].expand(batch, *like.shape))
        return {n.name: tuple(n.meta["val"].shape) for n in g.gm.graph.nodes if hasattr(n.meta.get("val"), "shape")}

    def bounds(
        self,
        spec: InputSpec,
        output: OutputSpec | None = None,
        *,
        splits: dict | None = None,
        known: dict | None = None,
        warm: dict | None = None,
        _values: Mapping[str, torch.Tensor] | None = None,
    ) -> Bounds:
        """Sound bounds over ``spec`` (see :class:`~boundflow.domains.base.PreparedModel`).
        ``splits``: node name -> ``(lower, upper)`` (batch-first, node-shaped; ``±inf`` where
        free) that hold on the sub-domain of each sample; then ``Bounds.empty`` marks samples
        whose splits contradict a sound bound (beyond rounding) and ``Bounds.intermediate``
        holds the bounds of every split node.  ``known``: like ``splits``, sound bounds already
        known on each sample's sub-domain (e.g. its parent's); intersected with ``splits``.
        ``warm``: the ``Bounds.params`` of earlier queries (rows of this batch) for
        ``alpha-crown`` to start from (others ignore it).  ``_values``: internal (a lifted
        ``LinearSpec``'s slope, see :meth:`graph`)."""
        if known:
            splits = dict(splits or {})
            for name, (k_lo, k_hi) in known.items():
                s_lo, s_hi = splits.get(name, (k_lo, k_hi))
                splits[name] = (torch.maximum(s_lo, k_lo), torch.minimum(s_hi, k_hi))
        if isinstance(spec, LinearSpec):
            if splits:
                raise UnsupportedOperation("splits are not supported with a LinearSpec input")
            return self._lifted_query(spec, output)
        C = None if output is None else torch.as_tensor(output.C, dtype=spec.lower.dtype)
        lo, hi = spec.lower, spec.upper
        n = lo.shape[0]
        if splits is None and self.pad:  # pad to a power of two so that few graphs serve many batch sizes
            size = 1 << max(0, (n - 1).bit_length())
            if size > n:
                lo = torch.cat([lo, lo[-1:].expand(size - n, *lo.shape[1:])])
                hi = torch.cat([hi, hi[-1:].expand(size - n, *hi.shape[1:])])
                if C is not None and C.dim() == 3:
                    C = torch.cat([C, C[-1:].expand(size - n, *C.shape[1:])])
        g = self.graph((lo + hi) / 2, _values)
        lb, ub, extra = self.domain._run(g, lo, hi, C, splits, warm)
        lb, ub = lb[:n], ub[:n]
        if C is None:
            shape = _out_shape(g, lb)
            lb, ub = lb.reshape(n, *shape[1:]), ub.reshape(n, *shape[1:])
        res = apply_output(lb, ub, output)
        if extra is not None:
            res.empty = empty_domains(extra)
            by_name = {nd.name: nd for nd in g.gm.graph.nodes}
            res.intermediate = {k: (extra.lower[by_name[k]], extra.upper[by_name[k]]) for k in splits}
            res.scores = {k: v[:n] for k, v in branch_scores(extra, splits).items()}
            res.params = extra.params
        return res

    def _lifted_query(self, spec: LinearSpec, output: OutputSpec | None) -> Bounds:
        """Bounds over a :class:`LinearSpec`: the model lifted to ``z = (theta, nu)``
        (:meth:`LinearSpec.lift`), prepared once per slope shape; later queries of that shape
        reuse its captured graph with their own slope (the slope is a placeholder of the graph,
        never a constant of it)."""
        lifted, box = spec.lift(self.model)
        key = (tuple(spec.slope.shape), tuple(spec.shape), spec.slope.dtype, spec.slope.device)
        child = self._lifted.get(key)
        if child is None:
            params = {f"model.{k}": v for k, v in self.params.items()} if self.params else None
            child = self._lifted[key] = type(self)(self.domain, lifted, params, pad=False)
        return child.bounds(box, output, _values={"slope": spec.slope})


class CrownDomain(DomainBase):
    """CROWN: sound bounds, never looser than interval propagation per output.

    ``maxpool="tight"`` lets max pooling's upper line be the pivot-difference line wherever it
    is lower at the centre of the box (:func:`boundflow.domains.linear.maxpool.maxpool_back`),
    and intersects the result with the ``deeppoly`` run, so it is never looser than that:
    ``compute_bounds(model, lo, hi, method=CrownDomain("tight"))``.

    ``sparse`` (default): a node read only by ReLU/LeakyReLU (directly or through
    rearrangements) gets CROWN bounds only where its
    interval bounds leave the sign open, as auto_LiRPA does (a neuron of known sign is relaxed
    exactly whatever its bounds); ``sparse=False`` bounds every entry, which can make later
    interval bounds, and so the result, slightly tighter (0-2% of the output width on small
    random CNNs) at up to twice the time on CNNs."""

    name = "crown"

    def __init__(self, maxpool: str = "deeppoly", sparse: bool = True):
        if maxpool not in ("deeppoly", "tight"):
            raise ValueError(f"maxpool must be 'deeppoly' or 'tight', got {maxpool!r}")
        if not isinstance(sparse, bool):
            raise ValueError(f"sparse must be True or False, got {sparse!r}")
        self.maxpool, self.sparse = maxpool, sparse

    def prepare(self, model: nn.Module, params=None) -> LinearPrepared:
        return LinearPrepared(self, model, params)

    def _run(self, g, lo, hi, C, splits, warm=None):
        tight, sparse = self.maxpool == "tight", self.sparse
        if splits is None and not tight and forward_pays(g, lo):
            # a narrow input into a wide network: intermediate bounds by forward mode (sound
            # for the box), then one backward pass from the output through them
            from boundflow.domains.linear.forward import forward_bounds

            nodes: dict = {}
            forward_bounds(g, lo, hi, nodes_out=nodes)
            state = prepare(g, lo, hi, refine=False, overrides=nodes, sparse=sparse)
            lb, ub, _ = crown(g, lo, hi, C, state=state)
            return lb, ub, None
        state = prepare(g, lo, hi, overrides=splits, tight_pool=tight, sparse=sparse)
        lb, ub, state = crown(g, lo, hi, C, state=state)
        if tight:  # the per-window choice of upper line is a heuristic: intersect with DeepPoly's
            plain = prepare(g, lo, hi, overrides=splits, sparse=sparse)
            d_lb, d_ub, plain = crown(g, lo, hi, C, state=plain)
            lb, ub = intersect(lb, ub, d_lb, d_ub)
            if splits is not None:
                for n in state.lower:
                    state.lower[n], state.upper[n] = intersect(state.lower[n], state.upper[n],
                                                               plain.lower[n], plain.upper[n])  # fmt: skip
        return lb, ub, state if splits is not None else None


class AlphaCrownDomain(DomainBase):
    """alpha-CROWN: CROWN with optimised ReLU slopes; never looser than CROWN.  ``deadline``
    (a ``time.monotonic()`` reading) or the thread's :func:`boundflow.deadline.within` stops the
    iterations early (every iterate is sound).  On a narrow input into a wide network
    (:func:`~boundflow.domains.linear.crown.forward_pays`) it is CROWN with forward-mode
    intermediate bounds.

    With ``splits=`` (branch and bound's sub-domains) it is **beta-CROWN**: the split
    constraints, on any node's neurons, are also added to the objective with optimised
    multipliers (:mod:`boundflow.domains.linear.beta`), sound for every multiplier value.
    ``sides=("lower",)`` optimises only the lower bounds (the upper bounds are CROWN's) — what
    a verifier proving ``C y > d`` needs, at half the cost.  ``intermediate``: iterations of
    alpha-CROWN on every ReLU input's bounds first
    (:func:`~boundflow.domains.linear.alpha.optimise_intermediate`; 0: CROWN's), within
    ``intermediate_share`` of the time left to the deadline."""

    name = "alpha-crown"

    def __init__(
        self,
        iterations: int = 20,
        lr: float = 0.1,
        deadline: float | None = None,
        sides: tuple[str, ...] = ("lower", "upper"),
        lr_beta: float = 0.05,
        intermediate: int = 0,
        intermediate_share: float = 1.0,
    ):
        if not set(sides) <= {"lower", "upper"} or not sides:
            raise ValueError(f"sides must name 'lower' and/or 'upper', got {sides!r}")
        if intermediate < 0:
            raise ValueError(f"intermediate must be >= 0 iterations, got {intermediate!r}")
        self.iterations, self.lr, self.deadline = iterations, lr, deadline
        self.sides, self.lr_beta, self.intermediate = tuple(sides), lr_beta, intermediate
        self.intermediate_share = intermediate_share
        self._crown = CrownDomain()  # the narrow-input fallback

    def prepare(self, model: nn.Module, params=None) -> LinearPrepared:
        return LinearPrepared(self, model, params)

    def _run(self, g, lo, hi, C, splits, warm=None):
        if splits is None and forward_pays(g, lo):
            # a narrow input into a wide network: optimising slopes needs backward intermediate
            # bounds (minutes there); CROWN with forward intermediate bounds instead
            return self._crown._run(g, lo, hi, C, splits, warm)
        lb, ub, state = alpha_crown(
            g, lo, hi, C, self.iterations, self.lr, deadline=self.deadline, splits=splits,
            sides=self.sides, lr_beta=self.lr_beta, return_state=True, warm=warm, intermediate=self.intermediate,
            intermediate_share=self.intermediate_share,
        )  # fmt: skip
        return lb, ub, state if splits is not None else None


class ForwardDomain(DomainBase):
    """Forward-mode linear bounds (DeepPoly's forward pass); cheap for low-dimensional inputs.
    An output spec ``C`` is applied to the output's linear forms before concretisation (the
    same margins as with ``C`` as a last layer).

    ``maxpool="tight"`` adds the pivot-difference upper bound for max pooling (see
    :func:`boundflow.domains.linear.forward.forward_bounds`) and intersects the result with the
    ``deeppoly`` run, so it is never looser than that; pass the instance as ``method`` to
    :func:`boundflow.compute_bounds`: ``compute_bounds(model, lo, hi, method=ForwardDomain("tight"))``."""

    name = "forward"

    def __init__(self, maxpool: str = "deeppoly"):
        from boundflow.domains.linear.forward import MAXPOOL_RELAXATIONS

        if maxpool not in MAXPOOL_RELAXATIONS:
            raise ValueError(f"maxpool must be one of {MAXPOOL_RELAXATIONS}, got {maxpool!r}")
        self.maxpool = maxpool

    def prepare(self, model: nn.Module, params=None) -> LinearPrepared:
        if params and any(getattr(t, "is_exact", lambda: True)() is False for t in params.values()):
            raise UnsupportedOperation("method='forward' does not support interval parameters yet; use 'crown'")
        return LinearPrepared(self, model, params)

    def _run(self, g, lo, hi, C, splits, warm=None):
        from boundflow.domains.linear.forward import forward_bounds

        if splits is not None:
            raise UnsupportedOperation("forward mode does not take split constraints; use crown")
        lb, ub = forward_bounds(g, lo, hi, self.maxpool, C)
        if self.maxpool == "tight":
            # the per-channel choice of upper form is a heuristic, so intersect with DeepPoly's
            # run: both are sound, and the result is never looser than either
            lb, ub = intersect(lb, ub, *forward_bounds(g, lo, hi, "deeppoly", C))
        if C is None:
            b = lb.shape[0]
            lb, ub = lb.reshape(b, -1), ub.reshape(b, -1)
        return lb, ub, None
