"""Relaxation tightness: the same networks and properties bounded by every domain.

    python benchmarks/tightness.py [--quick] [--out docs/benchmarks]

Networks on scikit-learn's 8x8 digits (embedded, no download): a random and a naturally
trained ReLU MLP 64-100-100-10, a trained CNN (conv-ReLU-maxpool-linear) and a trained sigmoid
MLP.  For 32 test points and an l-inf eps sweep, each method (``ibp``, ``crown``,
``alpha-crown``) reports the mean output-bound width relative to ``ibp``, the fraction of points
whose margins ``y_true - y_j`` are certified positive (bounded directly with a ``C`` matrix),
and the median time.  A speed section times ``crown`` against ``ibp`` on an MLP
784-256-256-256-10 with batch 32 at eps 0.01 and prints the ratio.
Writes tightness.json, tightness.md and tightness.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

import boundflow as bf  # noqa: E402
from boundflow.train import load_dataset  # noqa: E402

METHODS = ("ibp", "crown", "alpha-crown")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def _mlp(act: type[nn.Module], widths: list[int]) -> nn.Module:
    mods: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        mods += [nn.Linear(a, b), act()]
    mods.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*mods)


def _train(model: nn.Module, x, y, epochs: int = 30) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return model.eval()


def _margin_spec(y: torch.Tensor, n: int = 10) -> torch.Tensor:
    """(B, n-1, n): rows e_y - e_j for j != y."""
    C = torch.zeros(len(y), n - 1, n, dtype=torch.float64)
    for b, t in enumerate(y.tolist()):
        others = [j for j in range(n) if j != t]
        C[b, torch.arange(n - 1), t] = 1.0
        C[b, torch.arange(n - 1), others] = -1.0
    return C


def _timed(f, repeats: int):
    out = f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return out, statistics.median(ts)


def tightness(networks, x, y, epsilons, repeats):
    rows = []
    C = _margin_spec(y)
    for name, model in networks.items():
        for eps in epsilons:
            lo_x, hi_x = x - eps, x + eps
            res = {}
            for m in METHODS:
                (lo, hi), t = _timed(lambda: bf.compute_bounds(model, lo_x, hi_x, method=m), repeats)
                mlo, _ = bf.compute_bounds(model, lo_x, hi_x, method=m, C=C)
                res[m] = {
                    "width": (hi - lo).mean().item(),
                    "certified": (mlo > 0).all(1).double().mean().item(),
                    "time_ms": t * 1e3,
                }
            for m in METHODS:
                rows.append(
                    {
                        "network": name,
                        "eps": eps,
                        "method": m,
                        "mean_width": res[m]["width"],
                        "width_vs_ibp": res[m]["width"] / res["ibp"]["width"],
                        "certified_fraction": res[m]["certified"],
                        "time_ms": res[m]["time_ms"],
                    }
                )
    return rows


def speed(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    x = torch.rand(32, 784)
    out = []
    for dt in (torch.float32, torch.float64):
        _, ti = _timed(lambda: bf.compute_bounds(m, x - 0.01, x + 0.01, method="ibp", dtype=dt), repeats)
        _, tc = _timed(lambda: bf.compute_bounds(m, x - 0.01, x + 0.01, method="crown", dtype=dt), repeats)
        out.append({"dtype": str(dt).replace("torch.", ""), "ibp_ms": ti * 1e3, "crown_ms": tc * 1e3, "ratio": tc / ti})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two networks, two eps values, one repeat")
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    d = load_dataset("digits")
    xtr, ytr = d.x_train.float(), d.y_train
    x, y = d.x_test[:32], d.y_test[:32]
    networks = {"random MLP 64-100-100-10": _mlp(nn.ReLU, [64, 100, 100, 10]).eval()}
    networks["trained MLP 64-100-100-10"] = _train(_mlp(nn.ReLU, [64, 100, 100, 10]), xtr, ytr)
    if not args.quick:
        networks["trained CNN conv8-maxpool-fc"] = _train(DigitsCNN(), xtr, ytr)
        networks["trained sigmoid MLP 64-64-64-10"] = _train(_mlp(nn.Sigmoid, [64, 64, 64, 10]), xtr, ytr)
    epsilons = [0.003, 0.03] if args.quick else [0.001, 0.003, 0.01, 0.03]
    repeats = 1 if args.quick else args.repeats
    rows = tightness(networks, x, y, epsilons, repeats)
    sp = speed(repeats)
    out = Path(args.out)
    name = "tightness_quick" if args.quick else "tightness"
    write_json(
        out / f"{name}.json",
        {"benchmark": "tightness", "args": vars(args), "environment": environment(0), "rows": rows, "speed": sp},
    )
    cmd = "python benchmarks/tightness.py" + (" --quick" if args.quick else "") + f" --out {args.out}"
    lines = [
        f"# Relaxation tightness ({'quick' if args.quick else 'full'})",
        "",
        f"Command: `{cmd}`",
        "",
        "32 digits test points, l-inf ball of radius eps (features in [0, 1]). Width: mean output-bound "
        "width relative to ibp (lower is tighter). Certified: fraction of points whose margins are all "
        "certified positive (C-matrix bounds). Time: median per call, float64.",
        "",
        "| network | eps | method | width vs ibp | certified | time ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['eps']:g} | {r['method']} | {r['width_vs_ibp']:.3f} | "
            f"{r['certified_fraction']:.3f} | {r['time_ms']:.1f} |"
        )
    lines += [
        "",
        "## Speed: CROWN vs IBP, MLP 784-256-256-256-10, batch 32, eps 0.01",
        "",
        "| dtype | ibp ms | crown ms | crown / ibp |",
        "|---|---|---|---|",
    ]
    for s in sp:
        lines.append(f"| {s['dtype']} | {s['ibp_ms']:.2f} | {s['crown_ms']:.1f} | {s['ratio']:.0f}x |")
    lines += ["", f"![tightness]({name}.png)", ""]
    write_text(out / f"{name}.md", "\n".join(lines))
    _plot(rows, networks, epsilons, out / f"{name}.png")
    print("\n".join(lines[6:-2]))


def _plot(rows, networks, epsilons, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(networks), figsize=(4.2 * len(networks), 6.5), squeeze=False)
    for j, net in enumerate(networks):
        for i, m in enumerate(METHODS):
            rs = [r for r in rows if r["network"] == net and r["method"] == m]
            axes[0, j].loglog([r["eps"] for r in rs], [r["mean_width"] for r in rs], marker="o", color=f"C{i}", label=m)
            axes[1, j].semilogx(
                [r["eps"] for r in rs], [r["certified_fraction"] for r in rs], marker="o", color=f"C{i}", label=m
            )
        axes[0, j].set_title(net, fontsize=9)
        axes[0, j].set_ylabel("mean output-bound width")
        axes[1, j].set_ylabel("certified fraction")
        axes[1, j].set_xlabel("eps (l-inf radius, input units)")
        axes[1, j].set_ylim(-0.02, 1.02)
        for a in axes[:, j]:
            a.grid(alpha=0.3, which="both")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
