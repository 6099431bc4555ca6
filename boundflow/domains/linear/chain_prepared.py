"""A ReLU chain's dense specialisation of the linear domain's branching query.

:class:`ChainPrepared` answers the same query as
:class:`~boundflow.domains.linear.domain.LinearPrepared` — ``bounds(box, output, splits=,
known=, warm=)`` with the sub-domains' lower bounds, the ones proved empty, the bounds of every
split node, branching scores and the slopes and multipliers to warm-start children from — for
networks that are a chain of dense layers with ReLUs between them
(:class:`~boundflow.domains.linear.chain.Chain`), with dense matrices instead of a captured
graph (:mod:`boundflow.domains.linear.chain_bounds`).  So the verifier's one branch-and-bound
driver (:mod:`boundflow.verify.search`) searches ACAS Xu, mnist_fc and the RL controllers
through the same query as every other graph; only the arithmetic is specialised.

On top of the general query it offers ``lookahead=True``: the children's bounds from their
parent's layer bounds and parameters without recomputing either (filtered strong branching
compares candidate splits by these), which dense chains make cheap.

Soundness is :mod:`~boundflow.domains.linear.chain_bounds`'s: every slope in [0, 1] and
multiplier >= 0 gives a sound bound, splits and known bounds are intersected into the layer
bounds, and a sub-domain whose splits contradict sound bounds (beyond rounding) is marked empty.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from boundflow import deadline as deadlines
from boundflow.bounds import Bounds
from boundflow.domains.linear.chain import Chain
from boundflow.domains.linear.chain_bounds import backward, intersect_splits, layer_bounds, optimise
from boundflow.specs import OutputSpec

__all__ = ["ChainPrepared", "BoxBounds"]


@dataclass
class BoxBounds:
    """Bounds of a batch of input boxes for input splitting: per box the margin rows' lower
    bounds ``(B, S)``, whether the box is proved, a score per input dimension (larger: splitting
    it likely helps more; ``-1`` where the box has no width) and counterexample candidates
    ``(B, P, n)`` (its centre, and the corners that minimise the linear lower bounds)."""

    lower: torch.Tensor
    proved: torch.Tensor
    scores: torch.Tensor
    points: torch.Tensor


# input boxes of chains with a hidden layer wider than this get their hidden layers' bounds from
# forward symbolic bounds and intervals only (no back-substitution per neuron)
BOX_REFINE_WIDTH = 512


class ChainPrepared:
    """The branching query on a :class:`Chain` (see the module docstring).  ``iterations``:
    alpha-beta-CROWN iterations on the output rows per query; ``intermediate``: iterations of
    alpha-CROWN on every unstable hidden neuron's bounds, layer by layer, for queries without
    ``known`` bounds (a search's root: its children inherit them)."""

    cheap_lookahead = True

    def __init__(self, chain: Chain, iterations: int = 20, intermediate: int = 0):
        self.chain, self.iterations, self.intermediate = chain, iterations, intermediate
        self._specs: dict = {}

    # -- what the search asks of every prepared model ---------------------------------------

    def graph(self, example: torch.Tensor | None = None):
        """The chain's captured graph at batch one (what the exact leaf encodes)."""
        return self.chain.graph()[0]

    def split_nodes(self, batch: int, like: torch.Tensor, general: bool = False) -> list[str]:
        """The hidden layers' pre-activation node names (the same for every batch size)."""
        return list(self.chain.graph()[1])

    def node_shapes(self, batch: int, like: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Node name -> shape (batch first) of every value of the chain's graph."""
        g = self.chain.graph()[0]
        return {
            n.name: (batch, *tuple(n.meta["val"].shape)[1:])
            for n in g.gm.graph.nodes
            if hasattr(n.meta.get("val"), "shape")
        }

    def bounds(
        self,
        spec,
        output: OutputSpec,
        *,
        splits: dict | None = None,
        known: dict | None = None,
        warm: dict | None = None,
        lookahead: bool = False,
    ) -> Bounds:
        """Lower bounds ``(B, S)`` of ``C f(x) - d`` over each sub-domain (``spec``: a box of
        ``B`` flat inputs): the box, ``splits`` (node name -> ``(lower, upper)`` ``(B, n)``, a
        ReLU input split at 0) and ``known`` (sound bounds already known on the sub-domains,
        e.g. their parent's).  Layers up to the first one a split tightens keep ``known``;
        later ones are recomputed (CROWN, every neuron).  ``lookahead``: nothing is recomputed
        or optimised (the bound of ``warm``'s slopes and multipliers on ``known`` with the
        splits applied).  The result's ``upper`` is ``+inf`` (only lower bounds are searched
        for); ``intermediate``, ``scores``, ``params`` and ``empty`` are filled."""
        chain = self._spec_chain(output)
        names = self.split_nodes(0, spec.lower)
        K = len(chain.weights) - 1
        lo = spec.lower.reshape(spec.lower.shape[0], -1).to(torch.float64)
        hi = spec.upper.reshape(spec.upper.shape[0], -1).to(torch.float64)
        B, S = lo.shape[0], chain.widths[-1]
        dev = lo.device
        lam = torch.eye(S, dtype=torch.float64, device=dev)[None]
        signs = []
        for k, name in enumerate(names):
            s = torch.zeros(B, chain.widths[k], dtype=torch.int8, device=dev)
            if splits and name in splits:
                a, z = (t.reshape(B, -1) for t in splits[name])
                s = torch.where(a >= 0, 1, torch.where(z <= 0, -1, 0)).to(torch.int8)
            signs.append(s)
        start = None
        if known:
            start = [tuple(t.reshape(B, -1).to(torch.float64) for t in known[n]) for n in names]
            new = [((s > 0) & (l < 0)) | ((s < 0) & (u > 0)) for s, (l, u) in zip(signs, start, strict=True)]
        else:
            new = [s != 0 for s in signs]
        first = min([k for k in range(K) if bool(new[k].any())] or [K])
        init = self._init(warm, names, B, S)
        if lookahead:
            if start is None:
                raise ValueError("ChainPrepared.bounds: lookahead needs the known bounds")
            bounds, empty = [], torch.zeros(B, dtype=torch.bool, device=dev)
            for (l, u), s in zip(start, signs, strict=True):
                l, u, e = intersect_splits(l, u, s)
                bounds.append((l, u))
                empty |= e
            alphas, betas = init if init is not None else (None, None)
            with torch.no_grad():
                lb, _ = backward(chain, K, lam, lo, hi, bounds, alphas, betas, signs)
            return Bounds(lb, torch.full_like(lb, float("inf")), empty=empty)
        with torch.no_grad():
            if start is None:
                bounds, empty = layer_bounds(chain, lo, hi, signs)
            else:
                bounds, empty = layer_bounds(chain, lo, hi, signs, start=start, first=first + 1)
        if start is None and self.intermediate:
            bounds, empty = self._optimise_layers(chain, lo, hi, bounds, signs, empty)
        lb, (alphas, betas) = optimise(
            chain, K, lam, lo, hi, bounds, signs, iters=self.iterations, init=init, deadline=deadlines.current()
        )
        with torch.no_grad():
            _, coef = backward(chain, K, lam, lo, hi, bounds, alphas, betas, signs, keep=True)
        row = lb.argmax(1)
        rows = torch.arange(B, device=dev)
        scores = {}
        for k, (l, u) in enumerate(bounds):
            a = coef.a[k][rows, row]  # (B, n_k): the best row's coefficient of a_k
            unstable = (l < 0) & (u > 0)
            inter = (-a.clamp(max=0)) * u * (-l) / (u - l).clamp(min=1e-300)
            score = inter + 1e-6 * a.abs() * torch.minimum(u, -l)  # BaBSR's intercept score
            scores[names[k]] = torch.where(unstable, score, torch.zeros_like(score))
        params = {
            "alpha": {n: a.detach() for n, a in zip(names, alphas, strict=True)},
            # batch at dim 2, as the linear domain's multipliers
            "beta": {}
            if betas is None
            else {n: t.detach().permute(1, 2, 0) for n, t in zip(names, betas, strict=True)},
        }
        res = Bounds(lb, torch.full_like(lb, float("inf")), empty=empty)
        res.intermediate = dict(zip(names, bounds, strict=True))
        res.scores, res.params = scores, params
        return res

    def boxes(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        output: OutputSpec,
        floor=None,
        every: bool = False,
        alpha_iters: int = 10,
    ) -> BoxBounds:
        """Bounds of input boxes ``[lo, hi]`` (``(B, n)``) for input splitting: CROWN with every
        layer's bounds refined (intersected with forward symbolic bounds; on chains with a layer
        wider than :data:`BOX_REFINE_WIDTH`, the forward symbolic and interval bounds alone), then alpha-CROWN on
        the boxes CROWN leaves unproved and, where several rows may each prove a box, an
        optimised convex combination of the rows (``lambda >= 0`` summing to one: on a point
        where every row is <= 0, so is the combination).  A box is proved when some row's lower
        bound is > 0 (``every``: when every row's is; each row is then its own disjunct over the
        box).  ``floor``: sound lower bounds already known per box and row (a parent box's),
        kept where better.  Dimension scores: ``|input coefficient| * width`` of the row that
        decides (the best row; ``every``: the worst unproved one)."""
        chain = self._spec_chain(output)
        K, S = len(chain.weights) - 1, chain.widths[-1]
        dev = lo.device
        lam = torch.eye(S, dtype=torch.float64, device=dev)[None]
        done = (lambda b: (b > 0).all(1)) if every else (lambda b: (b > 0).any(1))
        deadline = deadlines.current()
        # wide layers: forward symbolic bounds only (one back-substitution per neuron would cost
        # width^3 per box), the output's by back-substitution (alpha-beta-CROWN's forward+backward)
        refine = max(chain.widths[:-1], default=0) <= BOX_REFINE_WIDTH
        with torch.no_grad():
            bounds, _ = layer_bounds(chain, lo, hi, cheap=True, refine=refine)
            lb, coef = backward(chain, K, lam, lo, hi, bounds, keep=True)
        if floor is not None:
            lb = torch.maximum(lb, floor)
        proved = done(lb)
        idx = torch.nonzero(~proved).reshape(-1)
        if len(idx) and alpha_iters:
            sub = [(bl[idx], bu[idx]) for bl, bu in bounds]
            lb2, _ = optimise(chain, K, lam, lo[idx], hi[idx], sub, iters=alpha_iters, deadline=deadline, every=every)
            lb[idx] = torch.maximum(lb[idx], lb2)
            still = ~done(lb[idx])
            if S > 1 and still.any() and not every:
                j = torch.nonzero(still).reshape(-1)
                sub_j = [(a[j], b[j]) for a, b in sub]
                comb = _combined(chain, lo[idx][j], hi[idx][j], sub_j, alpha_iters, deadline)
                still[j[comb > 0]] = False
            proved[idx[~still]] = True
        lam_x = coef.x  # (B, S, n): the input coefficients of CROWN's lower bounds
        width = hi - lo
        row = torch.where(lb > 0, float("inf"), lb).argmin(1) if every else lb.argmax(1)
        score = lam_x[torch.arange(len(lo), device=dev), row].abs() * width
        score = torch.where(width > 0, score + 1e-12 * width, -1.0)
        corners = torch.where(lam_x >= 0, lo[:, None, :], hi[:, None, :])
        points = torch.cat([((lo + hi) / 2)[:, None, :], corners], 1)
        return BoxBounds(lb, proved, score, points)

    def margins(self, x: torch.Tensor, output: OutputSpec) -> torch.Tensor:
        """The margins ``C f(x) - d`` at points ``x`` ``(N, n)``."""
        with torch.no_grad():
            return self._spec_chain(output)(x)

    # -- internals ---------------------------------------------------------------------------

    def _spec_chain(self, output: OutputSpec) -> Chain:
        C = torch.as_tensor(output.C, dtype=torch.float64)
        d = (
            torch.zeros(len(C), dtype=torch.float64, device=C.device)
            if output.d is None
            else torch.as_tensor(output.d, dtype=torch.float64)
        )
        key = (C.numpy().tobytes(), d.numpy().tobytes(), tuple(C.shape))
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) > 64:
                self._specs.clear()
            spec = self._specs[key] = self.chain.with_spec(C, d)
        return spec

    def _init(self, warm: dict | None, names: list[str], B: int, S: int):
        """``(alphas, betas)`` for :func:`optimise` from a ``warm`` dict (``None`` without
        slopes for every layer)."""
        if not warm or any(n not in warm.get("alpha", {}) for n in names):
            return None
        alphas = [warm["alpha"][n].to(torch.float64).reshape(B, S, -1) for n in names]
        betas = []
        for n, a in zip(names, alphas, strict=True):
            t = warm.get("beta", {}).get(n)
            betas.append(torch.zeros_like(a) if t is None else t.to(torch.float64).permute(2, 0, 1).reshape(a.shape))
        return alphas, betas

    def _optimise_layers(self, chain, lo, hi, bounds, signs, empty):
        """alpha-CROWN on every unstable neuron's lower and upper bound, layer by layer (the
        later layers recomputed from the improved ones)."""
        K = len(chain.weights) - 1
        for k in range(1, K):
            deadlines.check("alpha-CROWN on a chain's hidden layers")
            l, u = bounds[k]
            unstable = ((l < 0) & (u > 0)).any(0)
            if not unstable.any():
                continue
            eye = torch.eye(chain.widths[k], dtype=torch.float64, device=lo.device)
            rows = torch.cat([eye[unstable], -eye[unstable]])[None]
            lbk, _ = optimise(
                chain, k, rows, lo, hi, bounds, signs, iters=self.intermediate,
                deadline=deadlines.current(), stop_at=None,
            )  # fmt: skip
            m = int(unstable.sum())
            nl, nu = l.clone(), u.clone()
            nl[:, unstable] = torch.maximum(l[:, unstable], lbk[:, :m])
            nu[:, unstable] = torch.minimum(u[:, unstable], -lbk[:, m:])
            bounds[k] = (nl, nu)
            with torch.no_grad():
                bounds, e = layer_bounds(chain, lo, hi, signs, start=bounds, first=k + 1)
            empty = empty | e
        return bounds, empty


def _combined(chain: Chain, lo, hi, bounds, iters: int, deadline) -> torch.Tensor:
    """Lower bound of ``sum lambda_s m_s`` with ``lambda`` on the simplex, optimised by Adam on
    its softmax logits with CROWN's slopes (every ``lambda`` gives a sound bound)."""
    B, S, K = lo.shape[0], chain.widths[-1], len(chain.weights) - 1
    logits = torch.zeros(B, S, dtype=lo.dtype, device=lo.device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    best = torch.full((B,), -float("inf"), dtype=lo.dtype, device=lo.device)
    for _ in range(iters):
        if deadline is not None and time.monotonic() > deadline:
            break
        lam = torch.softmax(logits, 1)[:, None, :]
        lb, _ = backward(chain, K, lam, lo, hi, bounds)
        with torch.no_grad():
            best = torch.maximum(best, lb[:, 0])
            if bool((best > 0).all()):
                break
        opt.zero_grad()
        (-lb.sum()).backward()
        opt.step()
    return best
