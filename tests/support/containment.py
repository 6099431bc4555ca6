"""Containment checking: concrete evaluations (corners, random points, gradient attacks) of a
function must lie inside the interval evaluation, values and gradients alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from boundflow import IntervalTensor


@dataclass
class Iv:
    """An interval argument ``[lo, hi]``; gradients are checked with respect to it."""

    lo: torch.Tensor
    hi: torch.Tensor


def random_interval(
    gen: torch.Generator,
    shape: Sequence[int],
    *,
    scale: float = 1.0,
    width: float = 0.5,
    low: float | None = None,
    zero_width_frac: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> Iv:
    """Random centres ~ N(0, scale) (shifted above ``low`` if given), widths uniform in
    [0, width], a fraction of entries with zero width."""
    c = torch.randn(*shape, generator=gen, dtype=dtype) * scale
    w = torch.rand(*shape, generator=gen, dtype=dtype) * width
    w = torch.where(torch.rand(*shape, generator=gen, dtype=dtype) < zero_width_frac, torch.zeros_like(w), w)
    lo, hi = c - w / 2, c + w / 2
    if low is not None:
        shift = (low - lo).clamp(min=0)
        lo, hi = lo + shift, hi + shift
    return Iv(lo, hi)


def _floats(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [o for o in out if isinstance(o, torch.Tensor)]


def _bounds(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(t, IntervalTensor):
        return t.lower, t.upper
    return t, t


def _tol(lo: torch.Tensor, hi: torch.Tensor, rtol: float) -> torch.Tensor:
    finite = torch.cat([lo[torch.isfinite(lo)].abs().reshape(-1), hi[torch.isfinite(hi)].abs().reshape(-1)])
    scale = finite.max() if finite.numel() else torch.tensor(0.0, dtype=lo.dtype)
    return rtol * (1 + scale)


def _assert_inside(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, rtol: float, what: str) -> None:
    tol = _tol(lo, hi, rtol)
    ok = (v >= lo - tol) & (v <= hi + tol)
    if not ok.all():
        idx = tuple(torch.nonzero(~ok)[0].tolist())
        raise AssertionError(
            f"{what} outside bounds at {list(idx)}: value {v[idx].item()!r} "
            f"not in [{lo[idx].item()!r}, {hi[idx].item()!r}]"
        )


@dataclass
class Report:
    samples: int
    max_violation: float
    where: str


def check_containment(
    fn: Callable,
    args: Sequence,
    *,
    n_random: int = 150,
    n_corners: int = 40,
    attack_steps: int = 8,
    grad: bool = True,
    seed: int = 0,
    rtol: float = 1e-9,
    interval_fn: Callable | None = None,
) -> Report:
    """Evaluate ``fn`` once on intervals (every ``Iv`` argument becomes an ``IntervalTensor``
    with ``requires_grad``) and on at least ``2 + n_corners + n_random + 2 * attack_steps``
    concrete points inside; assert that every concrete output and every gradient of
    ``sum(w * output)`` (w fixed random) lies within the interval results.  Returns a report;
    raises AssertionError on a violation."""
    gen = torch.Generator().manual_seed(seed)
    iv_idx = [i for i, a in enumerate(args) if isinstance(a, Iv)]
    assert iv_idx, "no interval argument"

    def build(vals: dict[int, torch.Tensor]) -> list:
        return [vals[i] if i in vals else a for i, a in enumerate(args)]

    # -- interval evaluation ---------------------------------------------------------------
    iv_args = {
        i: IntervalTensor(args[i].lo, args[i].hi, requires_grad=grad and args[i].lo.is_floating_point()) for i in iv_idx
    }
    out = (interval_fn or fn)(*build(iv_args))
    outs = _floats(out)
    weights = [
        torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) if o.is_floating_point() else None
        for o in outs
    ]
    diff = [o for o, w in zip(outs, weights) if w is not None and o.requires_grad]
    out_bounds = [tuple(b.detach().clone() for b in _bounds(o)) for o in outs]
    for lo, hi in out_bounds:
        assert (lo <= hi).all(), "rule produced lower > upper"
        if lo.is_floating_point():
            assert not torch.isnan(lo).any() and not torch.isnan(hi).any(), "rule produced NaN bounds"
    grad_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if grad and diff:
        loss = sum((o * w).sum() for o, w in zip(outs, weights) if w is not None and o.requires_grad)
        loss.backward()
        for i in iv_idx:
            g = iv_args[i].grad
            if g is not None:
                glo, ghi = _bounds(g)
                assert (glo <= ghi).all(), "gradient rule produced lower > upper"
                assert not torch.isnan(glo).any() and not torch.isnan(ghi).any(), "NaN gradient bound"
                grad_bounds[i] = (glo, ghi)

    # -- concrete points ---------------------------------------------------------------------
    points: list[dict[int, torch.Tensor]] = []
    los = {i: args[i].lo for i in iv_idx}
    his = {i: args[i].hi for i in iv_idx}
    points.append(dict(los))
    points.append(dict(his))
    for _ in range(n_corners):
        points.append({i: torch.where(torch.rand(los[i].shape, generator=gen) < 0.5, los[i], his[i]) for i in iv_idx})
    for _ in range(n_random):
        points.append(
            {
                i: los[i]
                + (his[i] - los[i]) * torch.rand(los[i].shape, generator=gen, dtype=torch.float64).to(los[i].dtype)
                if los[i].is_floating_point()
                else los[i]
                for i in iv_idx
            }
        )
    target = len(points) + 2 * attack_steps
    if attack_steps and any(los[i].is_floating_point() for i in iv_idx):
        points += _attacks(fn, args, iv_idx, los, his, weights, attack_steps, gen)
    while len(points) < target:  # attacks stop early on non-differentiable outputs
        points.append(_uniform(los, his, gen))

    n = 0
    worst = 0.0
    where = ""
    for pt in points:
        vals = {i: (v.clone().requires_grad_(grad and v.is_floating_point())) for i, v in pt.items()}
        c_out = fn(*build(vals))
        c_outs = _floats(c_out)
        for k, (co, (lo, hi)) in enumerate(zip(c_outs, out_bounds)):
            co = co.detach()
            if co.dtype == torch.bool:
                co = co.to(torch.int64)
                lo, hi = lo.to(torch.int64), hi.to(torch.int64)
            if not co.is_floating_point():
                bad = (co < lo) | (co > hi)
                assert not bad.any(), (
                    f"output {k}: integer/bool value outside its interval at {torch.nonzero(bad)[0].tolist()}"
                )
                continue
            _assert_inside(co, lo, hi, rtol, f"output {k}")
            v = torch.maximum(lo - co, co - hi).max().item() if co.numel() else 0.0
            worst = max(worst, v)
        if grad and grad_bounds:
            loss = sum((o * w).sum() for o, w in zip(c_outs, weights) if w is not None and o.requires_grad)
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                gs = torch.autograd.grad(loss, [vals[i] for i in grad_bounds], allow_unused=True)
                for (i, (glo, ghi)), g in zip(grad_bounds.items(), gs):
                    if g is None:
                        g = torch.zeros_like(glo)
                    _assert_inside(g, glo, ghi, rtol, f"gradient of argument {i}")
        n += 1
    return Report(n, worst, where)


def _uniform(los, his, gen) -> dict[int, torch.Tensor]:
    return {
        i: los[i] + (his[i] - los[i]) * torch.rand(los[i].shape, generator=gen, dtype=torch.float64).to(los[i].dtype)
        if los[i].is_floating_point()
        else los[i]
        for i in los
    }


def _attacks(fn, args, iv_idx, los, his, weights, steps, gen) -> list[dict[int, torch.Tensor]]:
    """Projected sign-gradient ascent and descent on ``sum(w * output)`` from random starts."""
    pts = []
    for direction in (1.0, -1.0):
        cur = {
            i: los[i]
            + (his[i] - los[i]) * torch.rand(los[i].shape, generator=gen, dtype=torch.float64).to(los[i].dtype)
            if los[i].is_floating_point()
            else los[i]
            for i in iv_idx
        }
        for _ in range(steps):
            vals = {i: v.clone().requires_grad_(v.is_floating_point()) for i, v in cur.items()}
            full = [vals[i] if i in vals else a for i, a in enumerate(args)]
            outs = _floats(fn(*full))
            obj = sum((o * w).sum() for o, w in zip(outs, weights) if w is not None and o.is_floating_point())
            diff_vals = [vals[i] for i in iv_idx if vals[i].requires_grad]
            if not isinstance(obj, torch.Tensor) or not obj.requires_grad:
                break
            gs = torch.autograd.grad(obj, diff_vals, allow_unused=True)
            k = 0
            nxt = {}
            for i in iv_idx:
                v = cur[i]
                if v.is_floating_point():
                    g = gs[k]
                    k += 1
                    step = (his[i] - los[i]) * 0.25
                    if g is not None:
                        v = torch.minimum(torch.maximum(v + direction * step * torch.sign(g), los[i]), his[i])
                nxt[i] = v
            cur = nxt
            pts.append(dict(cur))
    return pts
