"""Differential soundness fuzzer over architectures *and* op arguments.

Each case draws a small random network from a seed: vector or image input; blocks of linear
layers, convolutions (random kernel, stride, padding, dilation), activations with slopes and
alphas of both signs, residual adds and subtractions with ``alpha``, concatenations, products
of activations, scalings and divisions by constants and by bounded parameters, max pooling of
every geometry (overlapping, padded, dilated, ``ceil_mode``) and average pooling; optionally
some weights as intervals.  Every method bounds the same box, and every bound is checked
against concrete evaluations at corners, random points and attacked points (projected
sign-gradient ascent/descent per output, with parameters drawn from their box), and against
the other methods (two sound ranges always intersect).

A method may refuse a case with a :class:`boundflow.errors.BoundFlowError` (an unsupported op,
interval weights in forward mode, ...); any other exception and any miss is a failure.

``python -m tests.fuzz --cases 300`` runs a longer campaign and prints the counts per method;
the default test suite runs a fixed budget of seeds (``tests/domains/test_fuzz.py``).
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

import boundflow as bf
from boundflow.domains.interval.rules_pooling import pool_index_windows
from boundflow.domains.linear.domain import AlphaCrownDomain, ForwardDomain
from boundflow.encode.network import network_bounds
from boundflow.errors import BoundFlowError, UnsupportedOperation

SLOPES = (-1.5, -0.5, 0.0, 0.01, 0.5, 1.0, 2.0, 3.0)
ALPHAS = (-2.0, -1.0, -0.5, 0.5, 1.0, 3.0)
ACTS = ("relu", "leaky", "sigmoid", "tanh", "elu")


class _Act(nn.Module):
    def __init__(self, kind: str, arg: float):
        super().__init__()
        self.kind, self.arg = kind, arg

    def forward(self, x):
        if self.kind == "relu":
            return torch.relu(x)
        if self.kind == "leaky":
            return torch.nn.functional.leaky_relu(x, self.arg)
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        if self.kind == "tanh":
            return torch.tanh(x)
        return torch.nn.functional.elu(x, self.arg)


class _Block(nn.Module):
    """One drawn block: ``kind`` says how ``forward`` combines its sub-modules."""

    def __init__(self, kind: str, arg=None, **mods):
        super().__init__()
        self.kind, self.arg = kind, arg
        for k, m in mods.items():
            setattr(self, k, m)

    def forward(self, x):
        k = self.kind
        if k in ("plain", "act", "pool"):
            return self.f(x)
        if k == "residual":  # x + alpha * f(x) or x - alpha * f(x)
            op, alpha = self.arg
            return (torch.add if op == "add" else torch.sub)(x, self.f(x), alpha=alpha)
        if k == "concat":
            return torch.cat([x, self.f(x)], dim=1)
        if k == "product":
            return self.f(x) * self.g(x)
        if k == "scale":
            return x * self.arg
        if k == "divide":
            return x / self.arg
        if k == "divparam":
            return x / self.s
        if k == "negsum":  # two branches of opposite sign, e.g. -relu(x) then a negative slope
            return torch.nn.functional.leaky_relu(-self.f(x), self.arg) - 0.5 * x
        raise ValueError(k)


class RandomNet(nn.Module):
    def __init__(self, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x.flatten(1))


@dataclass
class Case:
    seed: int
    model: nn.Module
    lo: torch.Tensor
    hi: torch.Tensor
    params: dict | None  # name -> IntervalTensor (bounded weights) or None
    description: list[str] = field(default_factory=list)


def _act(rng: random.Random) -> tuple[nn.Module, str]:
    kind = rng.choice(ACTS)
    arg = rng.choice(SLOPES) if kind == "leaky" else rng.choice(ALPHAS) if kind == "elu" else 0.0
    return _Act(kind, arg), f"{kind}({arg})"


def _act_block(rng: random.Random, blocks: list, desc: list) -> None:
    a, d = _act(rng)
    blocks.append(_Block("act", f=a))
    desc.append(d)


def _vector_blocks(rng: random.Random, n: int, desc: list[str]) -> tuple[list[nn.Module], int]:
    blocks: list[nn.Module] = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(
            ["linear", "linear", "act", "act", "residual", "concat", "product", "scale", "divide", "divparam", "negsum"]
        )
        if kind == "linear":
            m = rng.randint(2, 6)
            blocks.append(_Block("plain", f=nn.Linear(n, m)))
            desc.append(f"linear({n},{m})")
            n = m
        elif kind == "act":
            _act_block(rng, blocks, desc)
        elif kind == "residual":
            a, d = _act(rng)
            op, alpha = rng.choice(["add", "sub"]), rng.choice(ALPHAS)
            blocks.append(_Block("residual", (op, alpha), f=nn.Sequential(nn.Linear(n, n), a)))
            desc.append(f"{op}(x, {d}(linear x), alpha={alpha})")
        elif kind == "concat":
            a, d = _act(rng)
            blocks.append(_Block("concat", f=a))
            desc.append(f"cat(x, {d})")
            n = 2 * n
        elif kind == "product":
            (a, da), (b, db) = _act(rng), _act(rng)
            blocks.append(_Block("product", f=a, g=b))
            desc.append(f"{da}*{db}")
        elif kind == "scale":
            c = rng.choice([-2.5, -1.0, -0.3, 0.4, 2.0])
            blocks.append(_Block("scale", c))
            desc.append(f"x*{c}")
        elif kind == "divide":
            c = rng.choice([-2.0, -0.5, 0.25, 3.0])
            blocks.append(_Block("divide", c))
            desc.append(f"x/{c}")
        elif kind == "divparam":
            s = nn.Parameter(torch.tensor([rng.choice([-1.5, 0.7, 1.0, 2.0])]))
            blocks.append(_Block("divparam", s=s))
            desc.append(f"x/s(s={s.item()})")
        else:
            slope = rng.choice(SLOPES)
            blocks.append(_Block("negsum", slope, f=nn.ReLU()))
            desc.append(f"leaky(-relu x, {slope}) - x/2")
    return blocks, n


def _pool_args(rng: random.Random, h: int, w: int):
    """Random max-pool geometry valid for an ``h x w`` plane (torch's constraints)."""
    for _ in range(20):
        k = (rng.randint(1, 3), rng.randint(1, 3))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        d = (rng.choice([1, 1, 2]), rng.choice([1, 1, 2]))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        ceil = rng.random() < 0.3
        if all(d[i] * (k[i] - 1) + 1 <= (h, w)[i] + 2 * p[i] for i in range(2)):
            try:  # torch mishandles windows made only of padding; BoundFlow refuses them
                pool_index_windows((h, w), [k, s, p, d, ceil], "cpu")
            except UnsupportedOperation:
                continue
            return k, s, p, d, ceil
    return (1, 1), (1, 1), (0, 0), (1, 1), False


def _image_blocks(rng: random.Random, probe: torch.Tensor, desc: list[str]) -> list[nn.Module]:
    """Image blocks; each drawn geometry is tried on ``probe`` and dropped if torch refuses it."""
    c, h, w = probe.shape[1:]
    blocks: list[nn.Module] = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["conv", "conv", "act", "maxpool", "maxpool", "avgpool", "residual", "scale"])
        if kind == "conv":
            k, s = rng.randint(1, 3), rng.randint(1, 2)
            p, dil = rng.randint(0, k - 1), rng.choice([1, 1, 2])
            oc = rng.randint(1, 3)
            blocks.append(_Block("plain", f=nn.Conv2d(c, oc, k, stride=s, padding=p, dilation=dil)))
            desc.append(f"conv({c}->{oc}, k={k}, s={s}, p={p}, d={dil})")
            c = oc
        elif kind == "act":
            _act_block(rng, blocks, desc)
        elif kind == "maxpool":
            k, s, p, d, ceil = _pool_args(rng, h, w)
            blocks.append(_Block("pool", f=nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)))
            desc.append(f"maxpool(k={k}, s={s}, p={p}, d={d}, ceil={ceil})")
        elif kind == "avgpool":
            k = rng.randint(1, 2)
            blocks.append(_Block("pool", f=nn.AvgPool2d(k, stride=rng.randint(1, 2))))
            desc.append(f"avgpool({k})")
        elif kind == "residual":
            a, d = _act(rng)
            op, alpha = rng.choice(["add", "sub"]), rng.choice(ALPHAS)
            blocks.append(_Block("residual", (op, alpha), f=nn.Sequential(nn.Conv2d(c, c, 3, padding=1), a)))
            desc.append(f"{op}(x, {d}(conv x), alpha={alpha})")
        else:
            cst = rng.choice([-1.5, 0.5, 2.0])
            blocks.append(_Block("scale", cst))
            desc.append(f"x*{cst}")
        try:  # keep only geometries torch accepts
            with torch.no_grad():
                shape = nn.Sequential(*blocks)(probe).shape
        except RuntimeError:
            blocks.pop()
            desc.pop()
            continue
        c, h, w = shape[1], shape[2], shape[3]
    return blocks


def draw(seed: int) -> Case:
    """The network, input box and bounded parameters of case ``seed`` (deterministic)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    desc: list[str] = []
    if rng.random() < 0.6:
        n = rng.randint(1, 4)
        blocks, n_out = _vector_blocks(rng, n, desc)
        shape = (1, n)
    else:
        c, h, w = rng.randint(1, 2), rng.randint(3, 6), rng.randint(3, 6)
        shape = (1, c, h, w)
        probe = torch.zeros(shape)
        blocks = _image_blocks(rng, probe, desc)
        with torch.no_grad():
            n_out = nn.Sequential(*blocks)(probe).flatten(1).shape[1]
    k = rng.randint(1, 3)
    model = RandomNet(blocks, nn.Linear(n_out, k)).double().eval()
    centre = torch.randn(shape, dtype=torch.float64)
    radius = torch.rand(shape, dtype=torch.float64) * rng.choice([0.05, 0.3, 1.0])
    fixed = torch.rand(shape) < rng.choice([0.0, 0.0, 0.5])  # some inputs fixed (zero width)
    radius = torch.where(fixed, torch.zeros_like(radius), radius)
    params = None
    names = [name for name, _ in model.named_parameters()]
    if rng.random() < 0.35:
        chosen = [nm for nm in names if rng.random() < 0.5] or names[:1]
        params = {
            nm: bf.IntervalTensor.from_center_radius(p.detach().clone(), rng.choice([1e-3, 0.02, 0.1]))
            for nm, p in model.named_parameters()
            if nm in chosen
        }
        # a divisor's box must exclude 0 for a finite quotient; keep it that way
        for nm, iv in params.items():
            if nm.endswith(".s") and (iv.lower <= 0).any() and (iv.upper >= 0).any():
                params[nm] = bf.IntervalTensor.from_center_radius(iv.center, iv.center.abs() * 0.1)
        desc.append(f"bounded weights: {sorted(params)}")
    return Case(seed, model, centre - radius, centre + radius, params, desc)


METHODS = ("ibp", "crown", "alpha-crown", "forward", "forward-tight", "lp", "milp", "mibp", "sdp")
SOLVER_METHODS = ("lp", "milp", "mibp", "sdp")
SOLVER_MAX_PARAMS = {"sdp": 150}  # parameters at most per solver method (default 400)
SDP_MAX_LIFTED = 40  # the fuzzer's SDP programs stay small (a second or so per solve)


def bounds_of(case: Case, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``method``'s output bounds for ``case`` (raises ``BoundFlowError`` when refused)."""
    if method in SOLVER_METHODS:
        extra = {"max_lifted": SDP_MAX_LIFTED} if method == "sdp" else {}
        lo, hi = network_bounds(case.model, case.lo, case.hi, method, case.params, time_limit=5.0, **extra)
        return lo.reshape(1, -1), hi.reshape(1, -1)
    domain = {
        "alpha-crown": AlphaCrownDomain(iterations=5),
        "forward": ForwardDomain("deeppoly"),
        "forward-tight": ForwardDomain("tight"),
    }.get(method, method)
    lo, hi = bf.compute_bounds(case.model, case.lo, case.hi, domain, params=case.params)
    return lo.reshape(1, -1), hi.reshape(1, -1)


def _param_sample(case: Case, gen: torch.Generator, corner: bool) -> dict:
    if not case.params:
        return {}
    out = {}
    for nm, iv in case.params.items():
        u = torch.rand(iv.lower.shape, generator=gen, dtype=torch.float64)
        if corner:
            u = (u < 0.5).to(torch.float64)
        out[nm] = iv.lower + (iv.upper - iv.lower) * u
    return out


def concrete_points(case: Case, n_random: int = 48, n_corners: int = 32, attack_steps: int = 12, seed: int = 0):
    """Concrete outputs ``(N, n_out)`` at corners, random points and attacked points of the box
    (and of the parameter box)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = case.lo, case.hi
    outs = []

    def run(x, p):
        y = functional_call(case.model, p, (x,)) if p else case.model(x)
        return y.reshape(y.shape[0], -1)

    with torch.no_grad():
        d = lo.numel()
        if d <= 5:
            corners = [
                torch.tensor(bits, dtype=torch.float64).reshape(lo.shape)
                for bits in itertools.product([0.0, 1.0], repeat=d)
            ]
        else:
            corners = [(torch.rand(lo.shape, generator=gen) < 0.5).to(torch.float64) for _ in range(n_corners)]
        for u in corners:
            outs.append(run(lo + (hi - lo) * u, _param_sample(case, gen, True)))
        for _ in range(n_random):
            u = torch.rand(lo.shape, generator=gen, dtype=torch.float64)
            outs.append(run(lo + (hi - lo) * u, _param_sample(case, gen, False)))
    y0 = outs[0]
    for j in range(y0.shape[1]):
        for sign in (1.0, -1.0):
            p = _param_sample(case, gen, True)
            x = (lo + (hi - lo) * torch.rand(lo.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
            step = (hi - lo) / 4
            for _ in range(attack_steps):
                y = run(x, p)
                (g,) = torch.autograd.grad(sign * y[:, j].sum(), x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(x + step * g.sign(), lo), hi)
                    outs.append(run(x, p))
                    step = step * 0.8
                x.requires_grad_(True)
    return torch.cat([o.detach() for o in outs], 0)


@dataclass
class Tally:
    checked: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)


def check_case(case: Case, methods=METHODS, tally: Tally | None = None, rtol: float = 1e-8) -> Tally:
    """Bound ``case`` with every method, check containment and pairwise consistency; record
    failures (never raises for a miss: the caller reports them all)."""
    tally = tally or Tally()
    ys = concrete_points(case, seed=case.seed)
    y_min, y_max = ys.min(0).values, ys.max(0).values
    scale = 1 + ys.abs().max().item()
    tol = rtol * scale
    got = {}
    for m in methods:
        if m in SOLVER_METHODS and sum(p.numel() for p in case.model.parameters()) > SOLVER_MAX_PARAMS.get(m, 400):
            continue  # keep solver programs small in the fuzzer
        if m == "mibp" and not case.params:
            continue  # mibp is the bounded-weight program; milp covers exact weights
        try:
            lo, hi = bounds_of(case, m)
        except BoundFlowError as e:
            tally.refused[m] += 1
            tally.reasons[f"{m}: {str(e)[:70]}"] += 1
            continue
        except Exception as e:  # noqa: BLE001 - a crash is a finding too
            tally.failures.append((case.seed, m, f"crashed: {type(e).__name__}: {e}", case.description))
            continue
        tally.checked[m] += 1
        lo, hi = lo[0], hi[0]
        bad = (y_min < lo - tol) | (y_max > hi + tol) | (lo > hi + tol) | torch.isnan(lo) | torch.isnan(hi)
        if bad.any():
            j = int(torch.nonzero(bad)[0])
            tally.failures.append(
                (
                    case.seed,
                    m,
                    f"output {j}: bound [{lo[j].item():.6g}, {hi[j].item():.6g}] vs sampled "
                    f"[{y_min[j].item():.6g}, {y_max[j].item():.6g}]",
                    case.description,
                )
            )
        got[m] = (lo, hi)
    for (m1, (l1, h1)), (m2, (l2, h2)) in itertools.combinations(got.items(), 2):
        disjoint = (l1 > h2 + tol) | (l2 > h1 + tol)
        if disjoint.any():
            j = int(torch.nonzero(disjoint)[0])
            tally.failures.append((case.seed, f"{m1}/{m2}", f"output {j}: disjoint ranges", case.description))
    return tally


def campaign(seeds, methods=METHODS, budget_s: float | None = None, progress: bool = False) -> tuple[Tally, int]:
    """Run ``seeds`` (stopping once ``budget_s`` is spent); returns the tally and cases run."""
    tally = Tally()
    start = time.perf_counter()
    n = 0
    it = seeds
    if progress:
        from tqdm import tqdm

        it = tqdm(list(seeds), desc="fuzz", unit="case")
    for s in it:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
        check_case(draw(s), methods, tally)
        n += 1
    return tally, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    tally, n = campaign(range(args.first_seed, args.first_seed + args.cases), args.methods.split(","), progress=True)
    print(f"{n} cases")
    for m in args.methods.split(","):
        print(f"{m:14s} checked {tally.checked[m]:5d}   refused {tally.refused[m]:5d}")
    for f in tally.failures:
        print("FAIL", f)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
