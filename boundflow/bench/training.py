"""Training-time tightness: interval (FullCert) vs solver-based (MIBP-Cert) certified training on
the same data and threat model (Two-Moons, every training point within eps in l-inf).

Per (method, eps, seed): certified test accuracy and mean parameter-bound width after every
epoch, the number of steps in which the mean width shrank, and seconds per epoch (wall clock,
``--workers`` solver processes).  ``--mibp-seeds`` / ``--mibp-eps`` restrict the (slow) exact
``mibp`` runs.  Used by ``boundflow bench training`` and ``benchmarks/mibp_moons.py``.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path

import boundflow.train as T
from boundflow.atomic import atomic_savefig, atomic_write_text
from boundflow.bench.tightness import environment
from boundflow.train.cli import mlp
from solvers.executor import make_executor

__all__ = ["run_one", "run_cli"]


def _med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def run_one(method: str, eps: float, seed: int, args, executor) -> dict:
    """One certified-training run; its per-epoch widths, accuracies and times."""
    n = args.n_train + args.n_test
    d = T.load_dataset("moons", seed=seed, n_samples=n, test_fraction=args.n_test / n)
    model = mlp(2, 1, args.hidden, 2, seed)
    cfg = T.TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        loss=args.loss,
        seed=seed,
        method=method,
        workers=args.workers,
        time_limit=args.time_limit,
    )
    data = T.linf(d.x_train, d.y_train, eps)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.TrainingDiverged)
        # one process pool shared by all runs: its start-up is not part of an epoch
        b = T.certified_training(model, data, cfg, test=(d.x_test, d.y_test), executor=executor)
    secs = time.perf_counter() - t0
    widths = [h["mean_width"] for h in b.history]
    shrink = 0
    prev = 0.0  # the start is a point
    for h in b.history:
        for w in h["step_widths"]:
            shrink += w < prev
            prev = w
    return {
        "method": method,
        "eps": eps,
        "seed": seed,
        "certified_accuracy_per_epoch": [h["certified_accuracy"] for h in b.history],
        "nominal_accuracy": b.history[-1]["nominal_accuracy"] if b.history else None,
        "width_per_epoch": widths,
        "seconds_per_epoch": [h["seconds"] for h in b.history],
        "shrinking_steps": int(shrink),
        "steps": sum(len(h["step_widths"]) for h in b.history),
        "solver_status": b.history[-1].get("solver_status") if b.history else None,
        "seconds": secs,
    }


def _defaults(args) -> None:
    """Fill the defaults that depend on ``--quick``."""
    q = getattr(args, "quick", False)
    if args.methods is None:
        args.methods = "interval,lp,milp" if q else "interval,lp,milp,mibp"
    if args.eps is None:
        args.eps = "1e-2" if q else "1e-4,1e-3,1e-2"
    if args.seeds is None:
        args.seeds = 1 if q else 3
    if args.epochs is None:
        args.epochs = 3 if q else 5


def run_cli(args) -> int:
    """``boundflow bench training``: run, then write ``<name>.json``, ``.md`` and ``.png``."""
    _defaults(args)
    from tqdm import tqdm

    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in ("interval", "lp", "milp", "mibp")]
    if unknown:
        raise SystemExit(f"error: --methods: unknown {unknown}; choose from interval, lp, milp, mibp")
    epsilons = [float(e) for e in args.eps.split(",")]
    mibp_eps = [float(e) for e in args.mibp_eps.split(",")] if args.mibp_eps else epsilons
    jobs = []
    for m in methods:
        for e in epsilons if m != "mibp" else mibp_eps:
            n = args.mibp_seeds if (m == "mibp" and args.mibp_seeds is not None) else args.seeds
            jobs += [(m, e, s) for s in range(n)]
    executor = make_executor("process", args.workers)
    try:
        runs = [
            run_one(m, e, s, args, executor)
            for m, e, s in tqdm(jobs, desc="training tightness", unit="run", disable=args.no_progress)
        ]
    finally:
        executor.close()
    rows = []
    for m in methods:
        for e in epsilons:
            rs = [r for r in runs if r["method"] == m and r["eps"] == e]
            if not rs:
                continue
            rows.append(
                {
                    "method": m,
                    "eps": e,
                    "seeds": len(rs),
                    "best_certified_accuracy": _med([max(r["certified_accuracy_per_epoch"], default=0) for r in rs]),
                    "final_certified_accuracy": _med([r["certified_accuracy_per_epoch"][-1] for r in rs]),
                    "final_width": _med([r["width_per_epoch"][-1] for r in rs]),
                    "shrinking_steps": _med([r["shrinking_steps"] for r in rs]),
                    "steps": rs[0]["steps"],
                    "seconds_per_epoch": _med([_med(r["seconds_per_epoch"]) for r in rs]),
                    "nominal_accuracy": _med([r["nominal_accuracy"] for r in rs]),
                }
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = getattr(args, "name", "training")
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "bench")}
    payload = {"benchmark": name, "args": settings, "environment": environment(), "rows": rows, "runs": runs}
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=1))
    cmd = (
        getattr(args, "cmd", "boundflow bench training")
        + " "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in settings.items()
            if v is not None and v is not False and k not in ("cmd", "name", "quick", "no_progress")
        )
    )
    lines = [
        "# Interval vs solver-based certified training on Two-Moons",
        "",
        f"Command: `{cmd}`",
        "",
        f"{args.n_train} training points, {args.n_test} test points, MLP 2-{args.hidden}-1 "
        f"({3 * args.hidden + 1 + args.hidden} parameters), batch {args.batch_size}, {args.loss}, lr {args.lr}, "
        f"{args.epochs} epochs; every training point within eps in l-inf.  Medians over seeds.  Certified accuracy: "
        "test points whose prediction is correct for every parameter vector in the box.  Shrinking steps: "
        "steps after which the mean parameter width is smaller than before.  Seconds per epoch: wall clock on "
        f"this 2-core machine with {args.workers} solver processes (MIBP-Cert reports 19-156 s per epoch on up "
        "to 32 cores with Gurobi).",
        "",
        "| method | eps | seeds | best cert. acc. | final cert. acc. | final mean width | shrinking steps "
        "| s / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['eps']:g} | {r['seeds']} | {r['best_certified_accuracy']:.3f} | "
            f"{r['final_certified_accuracy']:.3f} | {r['final_width']:.3g} | {r['shrinking_steps']:.0f}/{r['steps']} | "
            f"{r['seconds_per_epoch']:.2f} |"
        )
    lines += ["", f"![certified accuracy and width per epoch]({name}.png)", ""]
    atomic_write_text(out / f"{name}.md", "\n".join(lines))
    _plot(runs, methods, epsilons, out / f"{name}.png", args.epochs)
    print("\n".join(lines[6:-2]))
    print(f"wrote {out}/{name}.json, {name}.md, {name}.png")
    return 0


def _plot(runs, methods, epsilons, path, epochs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(epsilons), figsize=(4.2 * len(epsilons), 7), squeeze=False)
    for j, e in enumerate(epsilons):
        for i, m in enumerate(methods):
            rs = [r for r in runs if r["method"] == m and r["eps"] == e]
            if not rs:
                continue
            n = min(len(r["width_per_epoch"]) for r in rs)
            ep = range(1, n + 1)
            acc = [statistics.median(r["certified_accuracy_per_epoch"][k] for r in rs) for k in range(n)]
            wid = [statistics.median(r["width_per_epoch"][k] for r in rs) for k in range(n)]
            axes[0, j].plot(ep, acc, marker="o", ms=3, color=f"C{i}", label=m)
            axes[1, j].plot(ep, wid, marker="o", ms=3, color=f"C{i}", label=m)
        axes[0, j].set_title(f"eps = {e:g}")
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("epoch")
        for a in axes[:, j]:
            a.grid(alpha=0.3)
    axes[0, 0].set_ylabel("certified test accuracy (median)")
    axes[1, 0].set_ylabel("mean parameter-bound width (median, log)")
    axes[0, 0].legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
