"""One SGD step as a mixed-integer bilinear program (MIBP-Cert), for ReLU MLPs.

Variables: the current parameter box, the perturbed batch within its box, pre-activations,
ReLU states (binaries), activations, the loss derivative, the backward pass (chain rule, with
the bilinear products ``W * delta`` and ``delta * h``) and per-sample gradients.  The update
``p' = (1 - lr*wd) p - lr * mean_s g_s`` is linear in those variables, so every updated
parameter is an objective of the same program: minimising and maximising each gives a box
that contains every reachable ``p'`` and keeps the dependency between parameters, data and
gradients inside the step (the interval step loses it, so its widths only grow).

Exactness: ReLU (big-M with the binaries, also its derivative ``1[z > 0]``), the hinge loss's
derivative (a binary per sample) and MSE are exact; BCE's ``sigmoid(z) - y`` is bounded by the
sigmoid's linear relaxation over the logit's range (sound, not exact).  Bilinear products are
exact in ``mibp`` (SCIP) and McCormick-relaxed in ``milp``/``lp``.  The forward half is the one
network encoder's (:func:`boundflow.encode.network.encode_forward`, the encoding of the ``lp`` /
``milp`` / ``mibp`` domains and the verifier's exact leaves): the model captured with the
parameter box as bounded weights, each pre-activation boxed by CROWN intersected with interval
bounds.  The backward half's boxes come from interval arithmetic on the same quantities
(outward-padded for float64 rounding).

Supported: ``nn.Sequential`` of ``nn.Linear``, ``nn.ReLU`` (and ``nn.Flatten`` of flat input),
losses ``hinge``, ``bce`` (one output), ``mse``; SGD without momentum, with weight decay; data
boxes (``linf``, ``linf_subset``, ``missing``), exact labels, no per-batch budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from boundflow.domains.interval.tensor import IntervalTensor
from boundflow.domains.linear.crown import prepare
from boundflow.encode.network import encode_forward
from boundflow.graph import capture
from solvers.program import Program

__all__ = ["StepProgram", "build_step", "supported_layers", "MIBP_LOSSES"]

MIBP_LOSSES = ("hinge", "bce", "mse")
_PAD = 1e-12


def _pad(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward padding of bounds computed in float64 (covers the rounding of short sums)."""
    s = _PAD * (1 + np.maximum(np.abs(lo), np.abs(hi)))
    return lo - s, hi + s


def supported_layers(model: nn.Module) -> list[tuple[str, str]]:
    """``[(weight name, bias name or ''), ...]`` of the linear layers, in order; raises
    ``ValueError`` naming the first unsupported module."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"solver-based training (lp/milp/mibp) needs an nn.Sequential of Linear and ReLU layers, "
            f"got {type(model).__name__}; use method='interval' for other models"
        )
    layers: list[tuple[str, str]] = []
    kinds = []
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            layers.append((f"{name}.weight", f"{name}.bias" if m.bias is not None else ""))
            kinds.append("linear")
        elif isinstance(m, nn.ReLU):
            if not kinds or kinds[-1] != "linear":
                raise ValueError(f"solver-based training: ReLU {name!r} must follow a Linear layer")
            kinds.append("relu")
        elif isinstance(m, nn.Flatten) and not layers:
            continue
        else:
            raise ValueError(
                f"solver-based training supports Linear, ReLU and a leading Flatten; module {name!r} is "
                f"{type(m).__name__} (use method='interval')"
            )
    if not layers:
        raise ValueError("solver-based training: the model has no Linear layer")
    if kinds[-1] != "linear":
        raise ValueError("solver-based training: the model must end with a Linear layer (logits)")
    for a, b in zip(kinds, kinds[1:]):
        if a == "linear" and b == "linear":
            raise ValueError("solver-based training: two Linear layers without a ReLU between them")
    return layers


@dataclass
class StepProgram:
    """The program and, per parameter name, the objective of every entry of ``p'`` as sparse
    rows: ``objectives[name] = [(indices, values), ...]`` in ``p.flatten()`` order."""

    program: Program
    objectives: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    shapes: dict[str, tuple[int, ...]]
    samples: list[dict[str, np.ndarray]]  # per sample: variables of z<l>, h<l>, a<l>, delta


class _Builder:
    def __init__(self) -> None:
        self.p = Program()

    def const(self, v) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return self.p.var(v, v)

    def b(self, idx):
        return self.p.bounds(idx)

    def mul(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``x * y`` elementwise; products with a fixed operand become exact linear rows."""
        return self.p.product(x, y)

    def sum_rows(self, out_bounds, parts: list[np.ndarray]) -> np.ndarray:
        """``out = sum(parts)`` (each (n, m): summed over m), a new variable vector (n,)."""
        allp = np.concatenate(parts, axis=1)
        lo, hi = self.b(allp)
        z = self.p.var(*_pad(lo.sum(1), hi.sum(1)))
        n, m = allp.shape
        self.p.rows(
            np.concatenate([np.arange(n), np.repeat(np.arange(n), m)]),
            np.concatenate([z, allp.ravel()]),
            np.concatenate([np.ones(n), -np.ones(n * m)]),
            np.zeros(n),
            np.zeros(n),
        )
        return z


def _loss_derivative(B: _Builder, z: np.ndarray, y: float | np.ndarray, loss: str) -> np.ndarray:
    """Variables ``d`` = the derivative of the per-sample loss w.r.t. the logits ``z``."""
    p = B.p
    lo, hi = B.b(z)
    if loss == "mse":
        o = len(z)
        t = np.asarray(y, dtype=np.float64)
        dl, dh = _pad(2 * (lo - t) / o, 2 * (hi - t) / o)
        d = p.var(dl, dh)
        # d = 2 (z - t) / o
        p.rows(
            np.concatenate([np.arange(o)] * 2),
            np.concatenate([d, z]),
            np.concatenate([np.ones(o), -2 / o * np.ones(o)]),
            -2 * t / o,
            -2 * t / o,
        )
        return d
    if len(z) != 1:
        raise ValueError(f"loss {loss!r} needs one output logit, the model has {len(z)}")
    yv = float(y)
    if loss == "hinge":
        s = 2 * yv - 1
        m_lo, m_hi = (s * lo[0], s * hi[0]) if s > 0 else (s * hi[0], s * lo[0])
        if m_hi < 1:
            return B.const([-s])
        if m_lo >= 1:
            return B.const([0.0])
        c = p.binary(())
        d = p.var(min(-s, 0.0), max(-s, 0.0))
        # d = -s c ; c = 1 => s z <= 1 ; c = 0 => s z >= 1
        p.rows([0, 0], [d, c], [1.0, s], [0.0], [0.0])
        p.rows([0, 0], [z[0], c], [s, m_hi - 1], [-np.inf], [m_hi])
        p.rows([0, 0], [z[0], c], [s, 1 - m_lo], [1.0], [np.inf])
        return np.array([d])
    if loss == "bce":
        from boundflow.domains.linear.relaxations import sigmoid

        lt, ht = torch.tensor([lo[0]], dtype=torch.float64), torch.tensor([hi[0]], dtype=torch.float64)
        a_l, b_l, a_u, b_u = (float(v) for v in sigmoid(lt, ht))
        s_lo, s_hi = float(torch.sigmoid(lt)), float(torch.sigmoid(ht))
        dl, dh = _pad(np.array([s_lo - yv]), np.array([s_hi - yv]))
        d = p.var(dl, dh)[0]
        pad = 1e-12
        # a_l z + b_l <= sigmoid(z) = d + y <= a_u z + b_u
        p.rows([0, 0], [d, z[0]], [1.0, -a_l], [b_l - yv - pad], [np.inf])
        p.rows([0, 0], [d, z[0]], [1.0, -a_u], [-np.inf], [b_u - yv + pad])
        return np.array([d])
    raise ValueError(f"solver-based training supports losses {', '.join(MIBP_LOSSES)}, not {loss!r}")


def _target(y, n_out: int, loss: str):
    if loss != "mse":
        return float(y)
    if torch.is_tensor(y) and y.is_floating_point():  # regression targets, one per output
        yt = y.double().reshape(-1).numpy()
        if len(yt) != n_out:
            raise ValueError(f"mse: {len(yt)} regression targets per sample, the model has {n_out} outputs")
        return yt
    yt = np.zeros(n_out)
    if n_out == 1:
        yt[0] = float(y)
    else:
        yt[int(y)] = 1.0
    return yt


def _sample(B: _Builder, graph, layers, P, xl, xh, y, loss) -> tuple[dict, dict]:
    """Add one sample's forward and backward pass; returns its variables and its gradient
    variables per parameter name (same shapes as the parameters).  The forward half is the one
    network encoder's (:func:`boundflow.encode.network.encode_forward`: every pre-activation
    boxed by CROWN with the bounded weights, intersected with interval bounds)."""
    lo = torch.from_numpy(np.asarray(xl, dtype=np.float64))[None]
    hi = torch.from_numpy(np.asarray(xh, dtype=np.float64))[None]
    fw = encode_forward(graph, prepare(graph, lo, hi, sparse=False), B.p, P)
    h = fw.input
    hs, masks = [h], []
    rec = {"x": h}
    for li, (z, act, ind) in enumerate(fw.relus):
        rec[f"z{li}"], rec[f"h{li}"], rec[f"a{li}"] = z, act, ind
        hs.append(act)
        masks.append(ind)
    h = rec[f"z{len(layers) - 1}"] = fw.output
    delta = _loss_derivative(B, h, _target(y, len(h), loss), loss)
    rec["delta"] = delta
    grads = {}
    for li in range(len(layers) - 1, -1, -1):
        w, b = layers[li]
        grads[w] = B.mul(delta[:, None], hs[li][None, :])
        if b:
            grads[b] = delta
        if li:
            Wd = B.mul(P[w], np.broadcast_to(delta[:, None], P[w].shape))
            q = B.sum_rows(None, [Wd.T])
            delta = B.mul(masks[li - 1], q)
    return rec, grads


def _params(B: _Builder, layers, lower, upper) -> dict[str, np.ndarray]:
    P = {}
    for w, b in layers:
        for n in (w, b):
            if n:
                P[n] = B.p.var(lower[n].double().numpy(), upper[n].double().numpy())
    return P


def _group_size(decompose: bool | int, n: int) -> int:
    """Samples per program: ``True`` -> 1, ``False`` -> all ``n``, an int ``G >= 1`` -> ``G``."""
    if decompose is True:
        return 1
    if decompose is False:
        return max(n, 1)
    if isinstance(decompose, int) and decompose >= 1:
        return min(decompose, max(n, 1))
    raise ValueError(f"decompose must be True, False or a group size >= 1, got {decompose!r}")


def build_step(
    model: nn.Module,
    lower: dict[str, torch.Tensor],
    upper: dict[str, torch.Tensor],
    x_lower: torch.Tensor,
    x_upper: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    lr: float,
    weight_decay: float = 0.0,
    decompose: bool | int = False,
) -> list[StepProgram]:
    """The program(s) of one SGD step on a batch (``x_lower/x_upper``: (B, d) data box, ``y``
    exact labels) from the parameter box ``[lower, upper]``.

    ``decompose=False``: one program, all samples sharing the parameter variables; the
    objective of ``p'_k`` is exactly ``(1 - lr wd) p_k - lr/B sum_s g_{k,s}``.
    ``decompose=True``: one program per sample ``s`` with its own copy of the parameters and
    objective ``((1 - lr wd) p_k - lr g_{k,s}) / B``; the sum over samples of their minima is a
    lower bound on the joint minimum (each sample may pick its own parameters — a Lagrangian
    relaxation of ``p_s = p`` with the multipliers splitting ``p_k``'s coefficient evenly), so
    it is sound and keeps the dependency of each sample's gradient on the parameters, at a
    fraction of the cost (B programs of one sample each).  ``decompose=G`` (an int): programs
    of ``G`` consecutive samples sharing one copy of the parameters (the last may be smaller):
    between the two (``1`` is ``True``; ``G >= B`` is the joint program), sound by the same
    argument with the multipliers split evenly between the groups."""
    if loss not in MIBP_LOSSES:
        raise ValueError(f"solver-based training supports losses {', '.join(MIBP_LOSSES)}, not {loss!r}")
    layers = supported_layers(model)
    n_b = x_lower.shape[0]
    xl = x_lower.reshape(n_b, -1).double().numpy()
    xh = x_upper.reshape(n_b, -1).double().numpy()
    n_in = lower[layers[0][0]].shape[1]
    if xl.shape[1] != n_in:
        raise ValueError(f"data has {xl.shape[1]} features, the first Linear layer expects {n_in}")
    size = _group_size(decompose, n_b)
    # the forward half through the one network encoder: the model captured once with the
    # parameter box (bounded weights), bounded per sample
    box = {n: IntervalTensor(lower[n].double(), upper[n].double()) for pair in layers for n in pair if n}
    graph = capture(model, torch.from_numpy((xl[:1] + xh[:1]) / 2), box)
    groups = [list(range(i, min(i + size, n_b))) for i in range(0, n_b, size)]
    out = []
    for group in groups:
        B = _Builder()
        P = _params(B, layers, lower, upper)
        recs, grads = [], {n: [] for n in P}
        for s in group:
            rec, g = _sample(B, graph, layers, P, xl[s], xh[s], y[s], loss)
            recs.append(rec)
            for n in P:
                grads[n].append(g[n])
        scale = 1.0 / len(group) * len(group) / n_b  # 1/B per sample in either form
        objectives, shapes = {}, {}
        for n, v in P.items():
            g = np.stack(grads[n]).reshape(len(group), -1)
            shapes[n] = v.shape
            flat_p = v.ravel()
            c_p = (1.0 - lr * weight_decay) * len(group) / n_b
            objectives[n] = [
                (np.concatenate([[flat_p[k]], g[:, k]]), np.concatenate([[c_p], np.full(len(group), -lr * scale)]))
                for k in range(len(flat_p))
            ]
        out.append(StepProgram(B.p, objectives, shapes, recs))
    return out


def solver_step(
    model: nn.Module,
    lower: dict[str, torch.Tensor],
    upper: dict[str, torch.Tensor],
    x_lower: torch.Tensor,
    x_upper: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    lr: float,
    weight_decay: float,
    mode: str,
    executor=None,
    time_limit: float | None = None,
    on_done=None,
    decompose: bool | int = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Bounds on every parameter after one SGD step, by minimising and maximising it over the
    step's program(s) with the ``mode`` solver (``lp``, ``milp``, ``mibp``); see
    :func:`build_step` for ``decompose``.  Returns ``(lower, upper, stats)``; ``stats`` counts
    solves, statuses and solver seconds."""
    import math
    from collections import Counter

    from solvers.executor import minimize_all

    progs = build_step(model, lower, upper, x_lower, x_upper, y, loss, lr, weight_decay, decompose)
    names = list(progs[0].objectives)
    tasks = []
    for sp_ in progs:
        objs = []
        for n in names:
            for idx, val in sp_.objectives[n]:
                objs.append((idx, val))
                objs.append((idx, -val))
        tasks.append((sp_.program, objs))
    results = minimize_all(tasks, mode, executor, time_limit, on_done=on_done)
    flat = [o for r in results for o in r]
    m = sum(int(np.prod(progs[0].shapes[n])) for n in names)
    lo_all = np.array([[o.bound for o in r[0::2]] for r in results])  # (programs, m)
    hi_all = np.array([[-o.bound for o in r[1::2]] for r in results])
    assert lo_all.shape == (len(progs), m)
    # sum over the programs, rounded outwards
    eps = np.finfo(np.float64).eps
    pad_l = len(progs) * eps * np.abs(lo_all).sum(0)
    pad_h = len(progs) * eps * np.abs(hi_all).sum(0)
    lo = np.array([math.fsum(c) for c in lo_all.T]) - pad_l
    hi = np.array([math.fsum(c) for c in hi_all.T]) + pad_h
    new_lo, new_hi = {}, {}
    k = 0
    for n in names:
        size = int(np.prod(progs[0].shapes[n]))
        new_lo[n] = torch.from_numpy(lo[k : k + size].copy()).reshape(progs[0].shapes[n])
        new_hi[n] = torch.from_numpy(hi[k : k + size].copy()).reshape(progs[0].shapes[n])
        k += size
    stats = {
        "solves": len(flat),
        "seconds": float(sum(o.seconds for o in flat)),
        "status": dict(Counter(o.status for o in flat)),
        "programs": len(progs),
        "variables": sum(p.program.n_vars for p in progs),
        "binaries": int(sum(sum(p.program.integer) for p in progs)),
        "products": sum(len(p.program.products) for p in progs),
    }
    return new_lo, new_hi, stats
