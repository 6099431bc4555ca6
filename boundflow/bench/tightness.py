"""Relaxation tightness: the same networks and properties bounded by every method.

For each case (network and points), each ``eps`` and each method, two properties are bounded
over the l-inf box around every point (clipped to the input domain):

* **ranges**: lower and upper bounds of every output;
* **margins**: lower bounds of ``y_label - y_j`` for every other class ``j`` (a ``C`` matrix,
  bounded directly); a point is *certified* when all its margins are positive.

Every bound is written as a lower bound ``L`` of a quantity ``q`` to minimise (an upper bound
of ``y_k`` is ``-L`` of ``-y_k``).  The reference for ``q`` is the exact minimum where the MILP
proves it (piecewise-linear network, solved to optimality within the time limit), otherwise the
best value an attack (projected gradient descent plus corners and random points) reached,
which is an upper bound of the minimum.  Per method the result holds the mean and worst gap
``reference - L`` (always >= 0 for a sound method up to the MILP gap of 1e-4), the certified
fraction, the mean range width and the time.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

import boundflow as bf
from boundflow.bench.networks import Case
from boundflow.errors import UnsupportedOperation

__all__ = ["METHODS", "DEFAULT_METHODS", "TightnessResult", "run_case", "run", "attack", "environment"]

# crown-tight: CrownDomain("tight"); sdp: small networks only (see boundflow.bench.networks.sdp_case)
METHODS = ("ibp", "crown", "crown-tight", "alpha-crown", "lp", "sdp", "milp")
DEFAULT_METHODS = ("ibp", "crown", "alpha-crown", "lp", "milp")  # what a run bounds unless told
D = torch.float64


def environment(seed: int = 0) -> dict:
    """Versions, machine and seed, recorded with every result."""
    import numpy

    env = {
        "boundflow": getattr(bf, "__version__", "dev"),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "seed": seed,
    }
    for mod in ("highspy", "pyscipopt", "onnxruntime"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # optional or without a version attribute
            env[mod] = None
    return env


def _spec(n_out: int, labels: torch.Tensor) -> torch.Tensor:
    """``(B, 2 n_out + n_out - 1, n_out)``: rows ``+e_k``, ``-e_k`` (ranges), then margins."""
    b = len(labels)
    eye = torch.eye(n_out, dtype=D)
    rows = torch.cat([eye, -eye]).unsqueeze(0).expand(b, -1, -1)
    margins = torch.zeros(b, n_out - 1, n_out, dtype=D)
    for i, lab in enumerate(labels.tolist()):
        others = [j for j in range(n_out) if j != lab]
        for r, j in enumerate(others):
            margins[i, r, lab], margins[i, r, j] = 1.0, -1.0
    return torch.cat([rows, margins], 1)


def attack(model, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, steps: int = 40, seed: int = 0) -> torch.Tensor:
    """The smallest value of each ``C @ model(x)`` row found in the box ``[lo, hi]``: corners
    (all low, all high), the centre, random points and signed-gradient descent from the centre
    and a random start, per row.  An upper bound on each row's minimum; shape ``(B, S)``."""
    g = torch.Generator().manual_seed(seed)
    b, s = C.shape[:2]

    def value(x):
        return torch.einsum("bso,bo->bs", C, model(x).reshape(b, -1))

    with torch.no_grad():
        best = torch.minimum(value(lo), value(hi))
        best = torch.minimum(best, value((lo + hi) / 2))
        for _ in range(8):
            best = torch.minimum(best, value(lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=lo.dtype)))
    step = (hi - lo) / 8
    for r in range(s):
        for start in ((lo + hi) / 2, lo + (hi - lo) * torch.rand(lo.shape, generator=g, dtype=lo.dtype)):
            x = start.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                v = value(x)[:, r]
                (grad,) = torch.autograd.grad(v.sum(), x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
                    best[:, r] = torch.minimum(best[:, r], value(x)[:, r])
            step = step / 2 if step.max() > 0 else step
        step = (hi - lo) / 8
    return best


@dataclass
class TightnessResult:
    """All numbers of one run: ``rows`` (one per case, eps, method) and ``bounds`` (per case and
    eps: every method's lower bounds, the attack values and the exact mask, for checks)."""

    rows: list[dict] = field(default_factory=list)
    bounds: list[dict] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _domain(method: str, time_limit: float):
    """The configured domain of a method row (any name the registry reads, with options):
    solver rows get the per-solve time limit unless the name sets one."""
    from boundflow.domains.registry import parse_method

    if method.split(":")[0] in ("lp", "sdp", "milp") and "time_limit=" not in method:
        method = f"{method}:time_limit={time_limit}"
    return parse_method(method)


def _bound(method: str, model, lo, hi, C, time_limit):
    """Lower bounds of ``C @ y`` and, where the domain knows it, the mask of exact entries."""
    res = _domain(method, time_limit).prepare(model).bounds(bf.Box(lo, hi), bf.OutputSpec(C))
    return res.lower, res.exact


def run_case(
    case: Case,
    eps_values: list[float],
    methods: tuple[str, ...] | list[str] = DEFAULT_METHODS,
    time_limit: float = 5.0,
    progress=None,
) -> tuple[list[dict], list[dict]]:
    """Rows and raw bounds for one case (see the module docstring)."""
    model = case.model.to(D).eval()
    x = case.points.to(D)
    with torch.no_grad():
        n_out = model(x[:1]).reshape(1, -1).shape[1]
    C = _spec(n_out, case.labels)
    n_rng = 2 * n_out
    rows, raw = [], []
    for eps in eps_values:
        lo, hi = x - eps, x + eps
        if case.domain is not None:
            lo, hi = lo.clamp(*case.domain), hi.clamp(*case.domain)
        att = attack(model, lo, hi, C)
        lbs, secs, exact, skipped = {}, {}, None, {}
        for m in methods:
            t0 = time.perf_counter()
            try:
                lb, ex = _bound(m, model, lo, hi, C, time_limit)
            except UnsupportedOperation as e:  # e.g. an op the solver encoding lacks: report, go on
                skipped[m] = str(e)
                if progress is not None:
                    progress.update(1)
                continue
            secs[m] = time.perf_counter() - t0
            lbs[m] = lb
            if m == "milp":
                exact = ex
            if progress is not None:
                progress.update(1)
        ref = att.clone()
        if exact is not None:
            ref = torch.where(exact, lbs["milp"], att)
        n_exact = int(exact.sum()) if exact is not None else 0
        for m, why in skipped.items():
            rows.append({"network": case.name, "source": case.source, "eps": eps, "method": m, "skipped": why})
        for m in lbs:
            gap = ref - lbs[m]
            width = (-lbs[m][:, n_out:n_rng] - lbs[m][:, :n_out]).mean()
            cert = (lbs[m][:, n_rng:] > 0).all(1).double().mean()
            rows.append(
                {
                    "network": case.name,
                    "source": case.source,
                    "eps": eps,
                    "method": m,
                    "mean_gap": float(gap.mean()),
                    "worst_gap": float(gap.max()),
                    "mean_margin_gap": float(gap[:, n_rng:].mean()),
                    "mean_width": float(width),
                    "certified": float(cert),
                    "seconds": secs[m],
                    "ms_per_point": 1000 * secs[m] / len(x),
                    "reference_exact_fraction": n_exact / ref.numel(),
                    "n_points": len(x),
                }
            )
        raw.append(
            {
                "network": case.name,
                "eps": eps,
                "n_out": n_out,
                "lower": {m: lb.tolist() for m, lb in lbs.items()},
                "attack": att.tolist(),
                "exact": exact.tolist() if exact is not None else None,
            }
        )
    return rows, raw


def run(
    cases: list[Case],
    eps_values: list[float],
    methods: tuple[str, ...] | list[str] = DEFAULT_METHODS,
    time_limit: float = 5.0,
    progress: bool = True,
    settings: dict | None = None,
) -> TightnessResult:
    """Bound every case at every eps with every method (progress bar over the bounding calls)."""
    unknown = [m for m in methods if m not in METHODS and m.split(":")[0] not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    res = TightnessResult(environment=environment(), settings=dict(settings or {}))
    from tqdm import tqdm

    bar = tqdm(total=len(cases) * len(eps_values) * len(methods), desc="tightness", unit="bound", disable=not progress)
    with bar:
        for case in cases:
            bar.set_postfix(network=case.name[:24])
            rows, raw = run_case(case, eps_values, methods, time_limit, bar)
            res.rows += rows
            res.bounds += raw
    return res


def check_consistency(res: TightnessResult, tol: float = 1e-6) -> list[str]:
    """Violations of the orderings every sound run must show (empty when consistent): per
    quantity, MILP >= LP >= CROWN, SDP >= LP and alpha-CROWN >= CROWN for lower bounds (up to
    the MILP's relative gap), SDP <= MILP where the MILP is exact, and no method above the
    attack's value."""
    bad = []
    for r in res.bounds:
        lower = {m: torch.tensor(v) for m, v in r["lower"].items()}
        att = torch.tensor(r["attack"])
        scale = tol * (1 + att.abs())
        where = f"{r['network']}, eps={r['eps']:g}"
        for m, lb in lower.items():
            if (lb > att + scale).any():
                bad.append(
                    f"{where}: {m} lower bound above the attack value at {int((lb > att + scale).sum())} entries"
                )
        pairs = [
            ("lp", "crown"), ("milp", "lp"), ("alpha-crown", "crown"), ("crown", "ibp"), ("crown-tight", "crown"),
            ("sdp", "lp"),
        ]  # fmt: skip
        for hi_m, lo_m in pairs:
            if hi_m in lower and lo_m in lower:
                worse = lower[hi_m] < lower[lo_m] - 1e-4 * (1 + lower[lo_m].abs())
                if worse.any():
                    bad.append(f"{where}: {hi_m} looser than {lo_m} at {int(worse.sum())} entries")
        if "sdp" in lower and r.get("exact") is not None:  # a relaxation is below the proven optimum
            exact = torch.tensor(r["exact"], dtype=torch.bool)
            above = exact & (lower["sdp"] > lower["milp"] + 1e-4 * (1 + lower["milp"].abs()))
            if above.any():
                bad.append(f"{where}: sdp above the exact MILP optimum at {int(above.sum())} entries")
    return bad


def summary(res: TightnessResult) -> list[dict]:
    """Per method over all cases and eps: median of the mean gaps, worst gap, certified
    fraction (mean) and median milliseconds per point."""
    out = []
    done = [r for r in res.rows if "skipped" not in r]
    for m in dict.fromkeys(r["method"] for r in done):
        rs = [r for r in done if r["method"] == m]
        out.append(
            {
                "method": m,
                "median_mean_gap": statistics.median(r["mean_gap"] for r in rs),
                "worst_gap": max(r["worst_gap"] for r in rs),
                "certified": sum(r["certified"] for r in rs) / len(rs),
                "median_ms_per_point": statistics.median(r["ms_per_point"] for r in rs),
            }
        )
    return out


def tradeoffs(res: TightnessResult, baseline: str = "ibp") -> list[dict]:
    """Per network and method: the share of the ``baseline``'s gap the method closes (mean over
    eps of ``1 - gap / baseline gap``), its milliseconds per point (median over eps) and the
    share closed per second per point; ``best`` marks, per network, the method with the most
    gap closed per second among those that close some of it (the best trade-off).  Empty
    without the baseline's rows."""
    done = [r for r in res.rows if "skipped" not in r and r.get("mean_gap") is not None]
    base = {(r["network"], r["eps"]): r["mean_gap"] for r in done if r["method"] == baseline}
    out = []
    for net in dict.fromkeys(r["network"] for r in done):
        rows = []
        for m in dict.fromkeys(r["method"] for r in done if r["network"] == net):
            if m == baseline:
                continue
            rs = [r for r in done if r["network"] == net and r["method"] == m and (net, r["eps"]) in base]
            if not rs:
                continue
            closed = statistics.mean(
                1 - r["mean_gap"] / base[(net, r["eps"])] if base[(net, r["eps"])] > 0 else 0.0 for r in rs
            )
            ms = statistics.median(r["ms_per_point"] for r in rs)
            rows.append({"network": net, "method": m, "gap_closed": closed, "ms_per_point": ms,
                         "closed_per_second": closed / max(ms / 1e3, 1e-9), "best": False})  # fmt: skip
        useful = [r for r in rows if r["gap_closed"] > 0]
        if useful:
            max(useful, key=lambda r: r["closed_per_second"])["best"] = True
        out += rows
    return out


def _points_text(res: TightnessResult) -> str:
    """``"16 points"``, or per network where the networks bring different numbers of points."""
    per = {r["network"]: r.get("n_points") for r in res.rows if "n_points" in r}
    counts = set(per.values())
    if not per:
        return f"{res.settings.get('points', '?')} points"
    if len(counts) == 1:
        return f"{counts.pop()} points"
    return "points: " + ", ".join(f"{n} ({k})" for k, n in per.items())


def markdown(res: TightnessResult, command: str) -> str:
    """The tables people read: the summary per method and one row per network, eps, method."""
    s = res.settings
    lines = [
        "# Relaxation tightness",
        "",
        f"Command: `{command}`",
        "",
        f"{_points_text(res)} per network, l-inf boxes of radius eps (digits features in [0, 1]), "
        f"solver time limit {s.get('time_limit', '?')} s per bound.  Gap: reference minus the method's lower "
        "bound, over all output-range and margin quantities (reference: the MILP optimum where it is proved "
        "exact, otherwise the best attack value, an upper bound of the optimum).  Width: mean output-range "
        "width.  Certified: fraction of points whose margins all have positive lower bounds.  "
        f"Machine: {res.environment.get('machine')}, {res.environment.get('cpu_threads')} threads, "
        f"torch {res.environment.get('torch')}.",
        "",
        "## Summary per method",
        "",
        "| method | median mean gap | worst gap | certified (mean) | median ms / point |",
        "|---|---|---|---|---|",
    ]
    for r in summary(res):
        lines.append(
            f"| {r['method']} | {r['median_mean_gap']:.4g} | {r['worst_gap']:.4g} | {r['certified']:.3f} | "
            f"{r['median_ms_per_point']:.1f} |"
        )
    trade = tradeoffs(res)
    if trade:
        lines += [
            "",
            "## Trade-off per network",
            "",
            "Gap closed: the share of IBP's mean gap a method closes (mean over eps); per second: that share "
            "divided by the method's seconds per point.  **Best**: the most gap closed per second.",
            "",
            "| network | method | gap closed | ms / point | gap closed per second | best trade-off |",
            "|---|---|---|---|---|---|",
        ]
        for r in trade:
            lines.append(
                f"| {r['network']} | {r['method']} | {r['gap_closed']:.1%} | {r['ms_per_point']:.1f} | "
                f"{r['closed_per_second']:.3g} | {'**best**' if r['best'] else ''} |"
            )
    lines += [
        "",
        "## Per network and eps",
        "",
        "| network | eps | method | mean gap | worst gap | mean width | certified | ms / point | exact ref. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.rows:
        if "skipped" in r:
            lines.append(f"| {r['network']} | {r['eps']:g} | {r['method']} | skipped: {r['skipped'][:80]} ||||||")
            continue
        lines.append(
            f"| {r['network']} | {r['eps']:g} | {r['method']} | {r['mean_gap']:.4g} | {r['worst_gap']:.4g} | "
            f"{r['mean_width']:.4g} | {r['certified']:.3f} | {r['ms_per_point']:.1f} | "
            f"{r['reference_exact_fraction']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(res: TightnessResult, path) -> None:
    """One panel per network: mean output-range width vs eps per method (log-log); and one panel
    of time vs tightness (ms per point vs mean gap) over all networks.  Methods that tie draw on
    top of each other, so each has its own marker and line style and the legend says which."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = [r for r in res.rows if "skipped" not in r]
    nets = list(dict.fromkeys(r["network"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    style = {
        m: dict(color=f"C{i}", marker="osD^vP*X"[i % 8], ls=("-", "--", ":", "-.")[i % 4])
        for i, m in enumerate(methods)
    }
    trade = tradeoffs(res)
    panels = len(nets) + 1 + bool(trade)
    cols = min(4, panels)
    nrow = math.ceil(panels / cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(4.2 * cols, 3.6 * nrow + 0.5), squeeze=False)
    axes = axes.ravel()
    for ax, net in zip(axes, nets):
        for k, m in enumerate(methods):
            rs = [r for r in rows if r["network"] == net and r["method"] == m]
            ax.plot([r["eps"] for r in rs], [max(r["mean_width"], 1e-12) for r in rs], ms=7 - k, mfc="none",
                    label=m, **style[m])  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short eps range overlap
        ax.set_xticks(sorted({r["eps"] for r in rows if r["network"] == net}))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(net, fontsize=8)
        ax.set_xlabel("eps (l-inf radius)")
        ax.set_ylabel("mean output-range width")
        ax.grid(alpha=0.3)
    ax = axes[len(nets)]
    gaps = [r["mean_gap"] for r in rows if r.get("mean_gap") is not None and r["mean_gap"] > 0]
    floor = min(gaps) / 10 if gaps else 1e-9
    for k, m in enumerate(methods):
        rs = [r for r in rows if r["method"] == m and r.get("mean_gap") is not None]
        ax.scatter([r["ms_per_point"] for r in rs], [max(r["mean_gap"], floor) for r in rs], s=40 - 4 * k,
                   facecolors="none", edgecolors=style[m]["color"], marker=style[m]["marker"])  # fmt: skip
    ax.axhline(floor, color="grey", lw=0.8, ls=":")
    ax.text(0.02, floor, " gap 0 (exact)", transform=ax.get_yaxis_transform(), fontsize=7, va="bottom", color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time per point (ms)")
    ax.set_ylabel("mean gap to the reference")
    ax.set_title("time vs tightness (every network and eps)", fontsize=8)
    ax.grid(alpha=0.3)
    if trade:  # gap closed per second, per network (bars) and method (colours)
        ax = axes[len(nets) + 1]
        others = [m for m in methods if any(r["method"] == m for r in trade)]
        width = 0.8 / max(len(others), 1)
        for k, m in enumerate(others):
            xs = [
                i + k * width for i, net in enumerate(nets) for r in trade if r["network"] == net and r["method"] == m
            ]
            ys = [
                max(r["closed_per_second"], 1e-6)
                for net in nets
                for r in trade
                if r["network"] == net and r["method"] == m
            ]
            ax.bar(xs, ys, width=width, color=style[m]["color"])
            for x, net in zip(xs, [n for n in nets for r in trade if r["network"] == n and r["method"] == m]):
                if any(r["best"] for r in trade if r["network"] == net and r["method"] == m):
                    ax.text(x, ys[xs.index(x)], "*", ha="center", va="bottom", fontsize=10)
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(nets))])
        ax.set_xticklabels([f"net {i + 1}" for i in range(len(nets))], fontsize=7)
        ax.set_ylabel("share of IBP's gap closed per second")
        ax.set_title("trade-off per network (* best; nets in panel order)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for a in axes[panels:]:
        a.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(methods), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.6 * nrow + 0.5)))
    from boundflow.atomic import atomic_savefig

    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
