"""FullCert on Two-Moons: certified accuracy per epoch and the epoch where bounds collapse.

    python benchmarks/fullcert_moons.py [--seeds 10] [--epochs 15] [--out docs/benchmarks]

Two-Moons (1000 training points, noise 0.1), MLPs 2-20-1 and 2-20-20-1, batch 100, BCE,
lr 0.1 (``--lr``; interval bounds grow roughly geometrically with lr x steps), every
training point within eps in l-inf, eps in {1e-4, 1e-3, 1e-2, 1e-1}.
Reports per (model, eps) over seeds: the median best certified test accuracy and at which
epoch it occurs, the median final certified accuracy, and the median epoch at which the
bounds collapse (no test point certified any more) or become non-finite.
Writes fullcert_moons.json, fullcert_moons.md and fullcert_moons.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402
from _common import median as _med  # noqa: E402

import boundflow.train as T  # noqa: E402
from boundflow.atomic import atomic_savefig  # noqa: E402
from boundflow.train.cli import mlp  # noqa: E402

EPSILONS = (1e-4, 1e-3, 1e-2, 1e-1)
MODELS = {"2-20-1": 2, "2-20-20-1": 3}


def run(model_name: str, eps: float, seed: int, epochs: int, lr: float) -> dict:
    d = T.load_dataset("moons", seed=seed, n_samples=1250, test_fraction=0.2)
    model = mlp(2, 1, 20, MODELS[model_name], seed)
    cfg = T.TrainConfig(epochs=epochs, lr=lr, batch_size=100, loss="bce", seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.TrainingDiverged)
        b = T.certified_training(model, T.linf(d.x_train, d.y_train, eps), cfg, test=(d.x_test, d.y_test))
    accs = [h["certified_accuracy"] for h in b.history]
    collapse = next((h["epoch"] for h in b.history if h["certified_fraction"] == 0.0), None)
    best = max(range(len(accs)), key=lambda i: accs[i]) if accs else None
    return {
        "model": model_name,
        "eps": eps,
        "seed": seed,
        "certified_accuracy_per_epoch": accs,
        "nominal_accuracy_per_epoch": [h["nominal_accuracy"] for h in b.history],
        "width_per_epoch": [h["mean_width"] for h in b.history],
        "best_certified_accuracy": accs[best] if accs else 0.0,
        "best_epoch": best + 1 if best is not None else None,
        "final_certified_accuracy": accs[-1] if accs else 0.0,
        "collapse_epoch": collapse,
        "nonfinite_epoch": (b.diverged_at + 1) if b.diverged_at is not None else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args()
    from tqdm import tqdm

    jobs = [(m, e, s) for m in MODELS for e in EPSILONS for s in range(args.seeds)]
    runs = [run(m, e, s, args.epochs, args.lr) for m, e, s in tqdm(jobs, desc="fullcert moons", unit="run")]
    rows = []
    for m in MODELS:
        for e in EPSILONS:
            rs = [r for r in runs if r["model"] == m and r["eps"] == e]
            collapsed = [r["collapse_epoch"] for r in rs]
            rows.append(
                {
                    "model": m,
                    "eps": e,
                    "seeds": len(rs),
                    "best_certified_accuracy": _med([r["best_certified_accuracy"] for r in rs]),
                    "best_epoch": _med([r["best_epoch"] for r in rs]),
                    "final_certified_accuracy": _med([r["final_certified_accuracy"] for r in rs]),
                    "nominal_accuracy": _med([r["nominal_accuracy_per_epoch"][-1] for r in rs]),
                    "collapse_epoch": _med(collapsed),
                    "runs_collapsed": sum(c is not None for c in collapsed),
                }
            )
    out = Path(args.out)
    write_json(
        out / "fullcert_moons.json",
        {"benchmark": "fullcert_moons", "args": vars(args), "environment": environment(), "rows": rows, "runs": runs},
    )
    cmd = (
        f"python benchmarks/fullcert_moons.py --seeds {args.seeds} --epochs {args.epochs} --lr {args.lr} "
        f"--out {args.out}"
    )
    lines = [
        "# FullCert on Two-Moons",
        "",
        f"Command: `{cmd}`",
        "",
        f"1000 training points, batch 100, BCE, lr {args.lr}, {args.epochs} epochs, medians over {args.seeds} seeds. "
        "Certified accuracy: test points whose prediction is certified and correct for every parameter vector "
        "in the box (test-time eps 0). Collapse: first epoch at which no test point is certified. "
        "Runs stop when bounds become non-finite; the plot counts them as 0 afterwards.",
        "",
        "| model | eps | best cert. acc. | at epoch | final cert. acc. | nominal acc. | collapse epoch "
        "| runs collapsed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ce = f"{r['collapse_epoch']:.0f}" if r["collapse_epoch"] is not None else f"> {args.epochs}"
        lines.append(
            f"| {r['model']} | {r['eps']:g} | {r['best_certified_accuracy']:.3f} | {r['best_epoch']:.0f} | "
            f"{r['final_certified_accuracy']:.3f} | {r['nominal_accuracy']:.3f} | {ce} | "
            f"{r['runs_collapsed']}/{r['seeds']} |"
        )
    lines += ["", "![certified accuracy per epoch](fullcert_moons.png)", ""]
    write_text(out / "fullcert_moons.md", "\n".join(lines))
    _plot(runs, out / "fullcert_moons.png", args.epochs)
    print("\n".join(lines[6:-2]))


def _plot(runs, path, epochs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, m in zip(axes, MODELS):
        for i, e in enumerate(EPSILONS):
            rs = [r for r in runs if r["model"] == m and r["eps"] == e]
            # a run stopped on non-finite bounds certifies nothing afterwards: pad with 0
            padded = [
                r["certified_accuracy_per_epoch"] + [0.0] * (epochs - len(r["certified_accuracy_per_epoch"]))
                for r in rs
            ]
            med = [statistics.median(p[k] for p in padded) for k in range(epochs)]
            ax.plot(range(1, epochs + 1), med, marker="o", ms=3, color=f"C{i}", label=f"eps = {e:g}")
        ax.set_title(f"MLP {m}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("certified test accuracy (median over seeds)")
    axes[0].legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
