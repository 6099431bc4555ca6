"""Verification of an ONNX model against a VNN-LIB property.

Per disjunct ``{x in box : C f(x) <= d}`` of the unsafe set: falsification (random points and
projected sign-gradient descent on the worst margin; every candidate re-run in onnxruntime) →
CROWN bounds on the margins ``C f(x) - d`` → branch and bound by input splitting with batched
CROWN (alpha-CROWN on hard boxes) until every box has a margin row whose lower bound is > 0, a
counterexample is confirmed, or time runs out.

Answers: ``unsat`` (proved: no input reaches the unsafe set, in exact arithmetic on the float64
evaluation of the network's float32 weights), ``sat`` (a counterexample whose onnxruntime
output satisfies every unsafe constraint), ``timeout``, or ``unknown``.  Never a wrong answer
by construction: ``unsat`` needs a sound bound for every box, ``sat`` needs onnxruntime's
confirmation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import boundflow as bf
from boundflow.onnx import load_onnx, parse_vnnlib
from boundflow.onnx.vnnlib import Disjunct

__all__ = ["Result", "verify", "verify_model"]


@dataclass
class Result:
    status: str  # "sat", "unsat", "timeout", "unknown"
    counterexample: np.ndarray | None = None
    output: np.ndarray | None = None
    seconds: float = 0.0
    boxes: int = 0
    notes: list[str] = field(default_factory=list)

    def vnncomp(self) -> str:
        """The VNN-COMP result text (status, and for ``sat`` the witness assignment)."""
        if self.status != "sat":
            return self.status + "\n"
        lines = ["sat", "("]
        lines += [f"(X_{i} {v!r})" for i, v in enumerate(self.counterexample.reshape(-1).tolist())]
        lines += [f"(Y_{i} {v!r})" for i, v in enumerate(self.output.reshape(-1).tolist())]
        return "\n".join(lines) + "\n)\n"


class _Batched(nn.Module):
    """``(N, n_in) -> (N, n_out)`` around an imported module."""

    def __init__(self, module: nn.Module, input_shape: list[int], batchable: bool):
        super().__init__()
        self.module, self.shape, self.batchable = module, input_shape, batchable

    def forward(self, x):
        n = x.shape[0]
        if self.batchable:
            return self.module(x.reshape(n, *self.shape[1:])).reshape(n, -1)
        return torch.stack([self.module(x[i].reshape(self.shape)).reshape(-1) for i in range(n)])


def _batchable(module, shape) -> bool:
    if not shape or shape[0] != 1 or len(shape) < 2:
        return False
    x = torch.rand(3, *shape[1:], dtype=torch.float64)
    try:
        with torch.no_grad():
            y = module(x)
            ref = torch.cat([module(x[i : i + 1]) for i in range(3)])
        return y.shape == ref.shape and torch.allclose(y, ref, atol=1e-9)
    except Exception:
        return False


class _Checker:
    """Re-runs candidates in onnxruntime (float32, the network's own precision)."""

    def __init__(self, path: Path, module):
        import gzip

        import onnxruntime as ort

        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        self.sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.name, self.shape = module.input_name, module.input_shape

    def check(self, x: torch.Tensor, dj: Disjunct) -> np.ndarray | None:
        xf = x.detach().to(torch.float32)
        if (xf.double() < dj.lower).any() or (xf.double() > dj.upper).any():
            xf = torch.minimum(torch.maximum(xf.double(), dj.lower), dj.upper).to(torch.float32)
            if (xf.double() < dj.lower).any() or (xf.double() > dj.upper).any():
                return None
        y = self.sess.run(None, {self.name: xf.reshape(self.shape).numpy()})[0].reshape(-1)
        if len(dj.C) == 0 or bool((dj.C.numpy() @ y.astype(np.float64) - dj.d.numpy() <= 0).all()):
            return np.concatenate([xf.numpy().reshape(-1), y])
        return None


def _margins(f, x, dj):
    return f(x) @ dj.C.T - dj.d  # (N, rows): unsafe iff all <= 0


def _falsify(f, dj: Disjunct, checker: _Checker, n_random: int = 512, starts: int = 8, steps: int = 30):
    lo, hi = dj.lower, dj.upper
    g = torch.Generator().manual_seed(0)
    pts = torch.cat(
        [
            ((lo + hi) / 2)[None],
            lo[None],
            hi[None],
            lo + (hi - lo) * torch.rand(n_random, len(lo), generator=g, dtype=torch.float64),
        ]
    )
    with torch.no_grad():
        worst = _margins(f, pts, dj).amax(1)
    order = worst.argsort()
    for i in order[:4].tolist():
        if worst[i] <= 0:
            w = checker.check(pts[i], dj)
            if w is not None:
                return w
    z = pts[order[:starts]].clone()
    step = (hi - lo) / 10
    for _ in range(steps):
        z.requires_grad_(True)
        m = _margins(f, z, dj)
        obj = m.amax(1).sum()
        (grad,) = torch.autograd.grad(obj, z)
        with torch.no_grad():
            z = torch.minimum(torch.maximum(z - step * grad.sign(), lo), hi)
            mz = _margins(f, z, dj).amax(1)
            for i in torch.nonzero(mz <= 0).reshape(-1).tolist():
                w = checker.check(z[i], dj)
                if w is not None:
                    return w
        step = step * 0.9
    return None


class _Bounder:
    """Margin lower bounds for batches of boxes; the captured graph is reused per (padded)
    batch size, since capturing costs more than a CROWN pass on small networks."""

    def __init__(self, f: nn.Module):
        self.f = f
        self.graphs: dict[int, object] = {}

    def __call__(self, lo, hi, C, d, method: str) -> torch.Tensor:
        from boundflow.domains.linear.crown import crown
        from boundflow.domains.linear.domain import alpha_crown
        from boundflow.graph import capture

        n = lo.shape[0]
        if method == "ibp":
            lb, _ = bf.compute_bounds(self.f, lo, hi, method="ibp", C=C)
            return lb - d
        size = 1 << max(0, (n - 1).bit_length())
        if size > n:
            lo = torch.cat([lo, lo[-1:].expand(size - n, -1)])
            hi = torch.cat([hi, hi[-1:].expand(size - n, -1)])
        g = self.graphs.get(size)
        if g is None:
            g = self.graphs[size] = capture(self.f, (lo + hi) / 2)
        if method == "crown":
            lb, _, _ = crown(g, lo, hi, C)
        else:
            lb, _ = alpha_crown(g, lo, hi, C)
        return (lb - d)[:n]


def _split_dims(f, blo, bhi, m, dj) -> torch.Tensor:
    """Per box, the input dimension with the largest ``width * |d margin / d x|`` for the margin
    row closest to being proved (largest lower bound), at the box centre."""
    centres = ((blo + bhi) / 2).requires_grad_(True)
    best = m.argmax(1)
    margins = _margins(f, centres, dj)
    sel = margins.gather(1, best[:, None]).sum()
    (grad,) = torch.autograd.grad(sel, centres)
    score = grad.abs() * (bhi - blo)
    return score.argmax(1)


def _relu_bab(f, dj: Disjunct, deadline: float, bounder: _Bounder, batch: int = 32):
    """Branch and bound on ReLU activation states over the whole input box (for wide inputs):
    a sub-domain fixes some neurons active (pre-activation >= 0) or inactive (<= 0); its bounds
    are CROWN's with those constraints intersected into the intermediate bounds (sound on the
    sub-domain; without beta-CROWN's Lagrangian terms).  Splits the unstable neuron with the
    largest relaxation area ``u (-l) / (u - l)``.  ``unsat`` when every sub-domain has a proved
    margin row or is empty."""
    from boundflow.domains.linear.crown import crown, empty_domains, prepare
    from boundflow.domains.linear.relaxations import RELAXATIONS
    from boundflow.graph import capture

    queue: list[dict] = [{}]  # node name -> {flat index: +1 active / -1 inactive}
    n_done = 0
    graphs: dict[int, object] = {}
    while queue:
        if time.monotonic() > deadline:
            return "timeout", n_done
        doms, queue = queue[:batch], queue[batch:]
        b = len(doms)
        lo = dj.lower[None].expand(b, -1).clone()
        hi = dj.upper[None].expand(b, -1).clone()
        g = graphs.get(b)
        if g is None:
            g = graphs[b] = capture(f, (lo + hi) / 2)
        # ReLU inputs of this graph (one capture per batch size; names are per graph)
        relu_inputs = [
            n.args[0].name
            for n in g.gm.graph.nodes
            if n.op == "call_function" and n.target in RELAXATIONS and n.target is torch.ops.aten.relu.default
        ]
        name_to_node = {n.name: n for n in g.gm.graph.nodes}
        overrides = {}
        for name in relu_inputs:
            shape = name_to_node[name].meta["val"].shape
            o_lo = torch.full((b, *shape[1:]), -float("inf"), dtype=lo.dtype).reshape(b, -1)
            o_hi = torch.full((b, *shape[1:]), float("inf"), dtype=lo.dtype).reshape(b, -1)
            for i, dom in enumerate(doms):
                for idx, sign in dom.get(name, {}).items():
                    if sign > 0:
                        o_lo[i, idx] = 0.0
                    else:
                        o_hi[i, idx] = 0.0
            overrides[name] = (o_lo.reshape(b, *shape[1:]), o_hi.reshape(b, *shape[1:]))
        state = prepare(g, lo, hi, overrides=overrides)
        lb, _, state = crown(g, lo, hi, dj.C, state=state)
        m = lb - dj.d
        done = (m > 0).any(1) | empty_domains(state)
        n_done += int(done.sum())
        for i in torch.nonzero(~done).reshape(-1).tolist():
            best, best_score = None, 0.0
            for name in relu_inputs:
                l_, u_ = state.lower[name_to_node[name]][i].reshape(-1), state.upper[name_to_node[name]][i].reshape(-1)
                unstable = (l_ < 0) & (u_ > 0)
                if not unstable.any():
                    continue
                score = torch.where(unstable, u_ * (-l_) / (u_ - l_).clamp(min=1e-12), torch.zeros_like(u_))
                j = int(score.argmax())
                if score[j] > best_score:
                    best, best_score = (name, j), float(score[j])
            if best is None:
                return "unknown", n_done  # all neurons fixed and still not proved: relaxation-free gap
            name, j = best
            for sign in (1, -1):
                child = {k: dict(v) for k, v in doms[i].items()}
                child.setdefault(name, {})[j] = sign
                queue.append(child)
    return "unsat", n_done


def _verify_disjunct(f, dj: Disjunct, checker: _Checker, deadline: float, batch: int = 1024):
    linear = f.batchable  # the linear domain needs batch-first graphs; otherwise intervals only
    bounder = _Bounder(f)
    if len(dj.C) == 0:  # no output constraint: every input is unsafe
        w = checker.check((dj.lower + dj.upper) / 2, dj)
        return ("sat", w, 0) if w is not None else ("unknown", None, 0)
    w = _falsify(f, dj, checker)
    if w is not None:
        return "sat", w, 0
    n_in = len(dj.lower)
    queue = [(dj.lower[None], dj.upper[None])]
    boxes = 0
    width0 = (dj.upper - dj.lower).clamp(min=1e-12)
    while queue:
        if time.monotonic() > deadline:
            return "timeout", None, boxes
        lo = torch.cat([q[0] for q in queue])
        hi = torch.cat([q[1] for q in queue])
        queue = []
        for s in range(0, len(lo), batch):
            blo, bhi = lo[s : s + batch], hi[s : s + batch]
            boxes += len(blo)
            m = bounder(blo, bhi, dj.C, dj.d, "crown" if linear else "ibp")
            open_ = ~(m > 0).any(1)
            if linear and open_.any() and len(blo) <= 8:
                m2 = bounder(blo[open_], bhi[open_], dj.C, dj.d, "alpha-crown")
                idx = torch.nonzero(open_).reshape(-1)
                open_[idx[(m2 > 0).any(1)]] = False
            if not open_.any():
                continue
            blo, bhi = blo[open_], bhi[open_]
            centres = (blo + bhi) / 2
            with torch.no_grad():
                cm = _margins(f, centres, dj).amax(1)
            for i in torch.nonzero(cm <= 0).reshape(-1).tolist():
                w = checker.check(centres[i], dj)
                if w is not None:
                    return "sat", w, boxes
            if n_in > 64:
                if not linear:
                    return "unknown", None, boxes
                st, nb = _relu_bab(f, dj, deadline, bounder)
                return st, None, boxes + nb
            if linear:
                dim = _split_dims(f, blo, bhi, m[open_], dj)
            else:
                dim = ((bhi - blo) / width0).argmax(1)
            mid = centres.gather(1, dim[:, None]).squeeze(1)
            rows = torch.arange(len(blo))
            left_hi, right_lo = bhi.clone(), blo.clone()
            left_hi[rows, dim] = mid
            right_lo[rows, dim] = mid
            queue.append((torch.cat([blo, right_lo]), torch.cat([left_hi, bhi])))
            if time.monotonic() > deadline:
                return "timeout", None, boxes
    return "unsat", None, boxes


def verify_model(module, onnx_path: Path, disjuncts: list[Disjunct], timeout: float) -> Result:
    start = time.monotonic()
    deadline = start + timeout
    module = module.double().eval()
    f = _Batched(module, module.input_shape, _batchable(module, module.input_shape)).eval()
    checker = _Checker(onnx_path, module)
    status, boxes = "unsat", 0
    for dj in disjuncts:
        st, w, nb = _verify_disjunct(f, dj, checker, deadline)
        boxes += nb
        if st == "sat":
            n_in = len(dj.lower)
            return Result("sat", w[:n_in], w[n_in:], time.monotonic() - start, boxes)
        if st != "unsat":
            status = st if status in ("unsat", "unknown") else status
    return Result(status, seconds=time.monotonic() - start, boxes=boxes)


def verify(onnx_path: str | Path, vnnlib_path: str | Path, timeout: float = 60.0) -> Result:
    """Verify the property in ``vnnlib_path`` on the network in ``onnx_path`` (see module
    docstring for what each answer guarantees)."""
    onnx_path = Path(onnx_path)
    module = load_onnx(onnx_path)
    n_in = int(np.prod(module.input_shape))
    disjuncts = parse_vnnlib(vnnlib_path, n_inputs=None)
    for dj in disjuncts:
        if len(dj.lower) != n_in:
            from boundflow.onnx.vnnlib import VnnlibError

            raise VnnlibError(f"{vnnlib_path}: property has {len(dj.lower)} inputs but {onnx_path} takes {n_in}")
    return verify_model(module, onnx_path, disjuncts, timeout)
