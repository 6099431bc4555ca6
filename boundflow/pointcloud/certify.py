"""Certifying point-cloud classifiers against parametric transformations.

For each object and each theta sub-range, the transformed cloud is relaxed either by its interval
box (``relaxation="interval"``) or by the Taylor relaxation ``x = S theta + nu`` with ``nu`` in a box
(``"taylor"``).  The latter is the input spec :class:`boundflow.LinearSpec`: the linear domain's
bounds end in ``theta`` — shared by all points — and are concretised over the theta box.  An
object is certified when its nominal prediction is correct and the margin of the true class
over every other class is positive on every sub-range.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import boundflow as bf
from boundflow.pointcloud import transforms as tf

__all__ = ["certify", "CertifyResult", "theta_range", "sub_ranges"]


def theta_range(theta, unit: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta``: a number ``t`` (the range ``[-t, t]``), a pair ``(lo, hi)``, or per-parameter
    pairs; ``unit``: ``"deg"`` or ``"rad"`` (coefficients of tapering/shearing are unit-free and
    never converted)."""
    if unit not in ("deg", "rad"):
        raise ValueError(f"unit must be 'deg' or 'rad', got {unit!r}")
    t = torch.as_tensor(theta, dtype=torch.float64)
    if t.dim() == 0:
        lo, hi = -t.abs().repeat(k), t.abs().repeat(k)
    elif t.shape == (2,):
        lo, hi = t[0].repeat(k), t[1].repeat(k)
    elif t.shape == (k, 2):
        lo, hi = t[:, 0], t[:, 1]
    else:
        raise ValueError(f"theta must be a number, a pair or {k} pairs, got shape {tuple(t.shape)}")
    if (lo > hi).any():
        raise ValueError(f"theta lower > upper in {int((lo > hi).sum())} of {k} parameters")
    return lo, hi


def _angles(transform: str) -> list[bool]:
    """Per parameter: is it an angle (converted from degrees)?"""
    out = []
    for t in tf.parse(transform):
        out += [t.name.startswith(("rotation", "twisting"))] * t.n_params
    return out


def sub_ranges(lo: torch.Tensor, hi: torch.Tensor, splits: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The theta box cut into ``splits`` equal pieces per parameter (``splits ** k`` boxes)."""
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    edges = [torch.linspace(float(a), float(b), splits + 1, dtype=torch.float64) for a, b in zip(lo, hi)]
    boxes = []
    for idx in itertools.product(range(splits), repeat=len(edges)):
        boxes.append(
            (
                torch.stack([e[i] for e, i in zip(edges, idx)]),
                torch.stack([e[i + 1] for e, i in zip(edges, idx)]),
            )
        )
    return boxes


def _halves(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, depth: int) -> list:
    """The two halves of the theta box ``[a, b]`` along its widest parameter (relative to
    ``scale``, the whole range's widths)."""
    j = int(torch.argmax((b - a) / scale))
    mid = (a[j] + b[j]) / 2
    b1, a2 = b.clone(), a.clone()
    b1[j], a2[j] = mid, mid
    return [(a, b1, depth), (a2, b, depth)]


def margins(
    model: nn.Module,
    points: torch.Tensor,
    label: int,
    transform: str,
    boxes: list[tuple[torch.Tensor, torch.Tensor]],
    relaxation: str = "taylor",
    method: str = "forward",
    maxpool: str | None = None,
    prepared=None,
) -> torch.Tensor:
    """Lower bounds ``(len(boxes), n_classes - 1)`` on the true-class margins per theta box.
    ``prepared``: ``model`` prepared for ``method``/``maxpool`` once by the caller
    (:func:`certify` does, for all its clouds), else prepared here.

    ``"taylor"`` bounds the network over the Taylor relaxation *and* over the interval box and
    keeps the larger lower bound per margin (both are sound), so it is never looser than
    ``"interval"``; the Taylor form wins on small ranges, the box where the remainder of a
    wide range dominates."""
    n = points.shape[0]
    with torch.no_grad():
        n_classes = model(points.unsqueeze(0)).shape[1]
    out = bf.OutputSpec.margins(label, n_classes, dtype=points.dtype, device=points.device)
    if relaxation not in ("taylor", "interval"):
        raise ValueError(f"relaxation must be 'taylor' or 'interval', got {relaxation!r}")
    prepared = prepared if prepared is not None else _domain(method, maxpool)[0].prepare(model)
    lo, hi = zip(*(tf.interval_bounds(points, transform, a, b) for a, b in boxes))
    box_margins = prepared.bounds(bf.Box(torch.stack(lo), torch.stack(hi)), out).lower
    if relaxation == "interval":
        return box_margins
    S, t_lo, t_hi, r_lo, r_hi = [], [], [], [], []
    for a, b in boxes:
        s, o_lo, o_hi = tf.taylor_bounds(points, transform, a, b)
        S.append(s.reshape(3 * n, -1))
        t_lo.append(a)
        t_hi.append(b)
        r_lo.append(o_lo.reshape(-1))
        r_hi.append(o_hi.reshape(-1))
    spec = bf.LinearSpec(
        torch.stack(S), torch.stack(t_lo), torch.stack(t_hi), torch.stack(r_lo), torch.stack(r_hi), (n, 3)
    )
    return torch.maximum(prepared.bounds(spec, out).lower, box_margins)


def _maxpool_default(method: str, maxpool: str | None) -> str:
    """``"tight"`` for ``method="forward"``, ``"deeppoly"`` otherwise, unless given."""
    if maxpool is None:
        return "tight" if method == "forward" else "deeppoly"
    return maxpool


def _domain(method: str, maxpool: str | None):
    """``(domain, maxpool)``: the network's domain, ``method`` as the registry reads it
    (:func:`boundflow.domains.registry.parse_method`, options included), with its max-pool
    relaxation: ``"tight"`` (default for ``forward``; ``forward`` and ``crown`` only) or
    ``"deeppoly"``; a ``maxpool=`` option in ``method`` decides where given."""
    from boundflow.domains.registry import parse_method

    base = method.split(":")[0].strip()
    if "maxpool=" in method:
        domain = parse_method(method)
        if maxpool is not None and maxpool != domain.maxpool:
            raise ValueError(f"method {method!r} sets maxpool={domain.maxpool}, but maxpool={maxpool!r} was given")
        return domain, domain.maxpool
    maxpool = _maxpool_default(base, maxpool)
    if maxpool not in ("tight", "deeppoly"):
        raise ValueError(f"maxpool must be 'tight' or 'deeppoly', got {maxpool!r}")
    if maxpool == "tight" and base not in ("forward", "crown"):
        raise ValueError(f"maxpool='tight' is implemented for method='forward' and 'crown', not {method!r}")
    return parse_method(f"{method}:maxpool=tight" if maxpool == "tight" else method), maxpool


@dataclass
class CertifyResult:
    """Per object: nominal prediction correct, certified, worst margin lower bound, seconds."""

    transform: str
    theta_lower: list[float]
    theta_upper: list[float]
    relaxation: str
    splits: int
    maxpool: str = "deeppoly"
    refine: int = 0
    correct: list[bool] = field(default_factory=list)
    certified: list[bool] = field(default_factory=list)
    worst_margin: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    boxes: list[int] = field(default_factory=list)  # sub-ranges bounded per object

    @property
    def certified_fraction(self) -> float:
        return sum(self.certified) / max(len(self.certified), 1)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(len(self.correct), 1)


def certify(
    model: nn.Module,
    points: torch.Tensor,
    labels: torch.Tensor,
    transform: str = "rotation-z",
    theta=(-3, 3),
    unit: str = "deg",
    splits: int = 10,
    relaxation: str = "taylor",
    method: str = "forward",
    batch: int = 16,
    progress: bool = False,
    maxpool: str | None = None,
    refine: int = 0,
) -> CertifyResult:
    """Certify each cloud in ``points`` ((M, N, 3) or (N, 3)) against ``transform`` for every theta
    in the range (degrees by default for angles), split into ``splits`` sub-ranges per parameter.
    ``refine``: a sub-range whose margins are not all positive is halved along its widest
    parameter (relative to the range) and both halves bounded again, up to ``refine`` times
    along any path, so the splits go where the relaxation is loose; the sub-ranges always cover
    the range, so a certificate holds for all of it.
    ``method``: the linear-domain method for the network (``"forward"``, cheap for the few theta
    inputs, or ``"crown"``/``"alpha-crown"``); ``maxpool``: ``"tight"`` (forward only, the
    default there) or ``"deeppoly"`` relaxation of the global max pool.
    Guarantee: a certified object keeps its (correct) prediction for every theta in the range —
    sound like the linear domain (exact arithmetic on the float64 inputs)."""
    model = model.double().eval()
    points = torch.as_tensor(points, dtype=torch.float64)
    if points.dim() == 2:
        points = points.unsqueeze(0)
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.shape[0] != points.shape[0]:
        raise ValueError(f"{points.shape[0]} clouds but {labels.shape[0]} labels")
    k = tf.n_params(transform)
    lo, hi = theta_range(theta, unit, k)
    if unit == "deg":
        conv = torch.tensor([math.pi / 180 if a else 1.0 for a in _angles(transform)], dtype=torch.float64)
        lo, hi = lo * conv, hi * conv
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    boxes = sub_ranges(lo, hi, splits)
    domain, maxpool = _domain(method, maxpool)  # validates before any work
    prepared = domain.prepare(model)  # once for all clouds and sub-ranges
    res = CertifyResult(transform, lo.tolist(), hi.tolist(), relaxation, splits, maxpool, refine)
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    it = range(points.shape[0])
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"certify {transform} ({relaxation})", unit="object")
    for i in it:
        t0 = time.perf_counter()
        with torch.no_grad():
            correct = int(model(points[i : i + 1]).argmax(1)) == int(labels[i])
        worst, n_boxes = -math.inf, 0
        if correct:
            worst = math.inf
            queue = [(a, b, 0) for a, b in boxes]
            while queue:
                chunk, queue = queue[:batch], queue[batch:]
                lb = margins(
                    model, points[i], int(labels[i]), transform, [(a, b) for a, b, _ in chunk], relaxation, method,
                    maxpool, prepared,
                ).amin(1)  # fmt: skip
                n_boxes += len(chunk)
                failed = []
                for (a, b, depth), m in zip(chunk, lb.tolist()):
                    if m > 0:
                        worst = min(worst, m)
                    elif depth < refine:
                        failed.extend(_halves(a, b, scale, depth + 1))
                    else:
                        worst = min(worst, m)
                if worst <= 0:
                    break  # one sub-range that fails at the finest split is enough
                queue = failed + queue  # refine where it failed first
        res.correct.append(correct)
        res.boxes.append(n_boxes)
        res.certified.append(bool(correct and worst > 0))
        res.worst_margin.append(worst)
        res.seconds.append(time.perf_counter() - t0)
        if progress:
            it.set_postfix(certified=f"{sum(res.certified)}/{len(res.certified)}")
    return res
