"""Training-time tightness: interval (FullCert) vs solver-based (MIBP-Cert) certified training on
the same data and threat model (every training point within eps in l-inf), in MIBP-Cert's setting:
separate training, validation and test sets, the box kept at the epoch with the best validation
certified accuracy, early stopping after ``--patience`` epochs without improvement.

Per (method, eps, seed): the kept box's certified test accuracy (the number reported), the
epoch it came from, certified accuracy and mean parameter-bound width after every epoch, the
parameters whose box got strictly narrower in each solver step, and seconds per epoch (wall
clock, ``--workers`` solver processes).  ``--solver-seeds`` / ``--solver-eps`` restrict the
solver methods (``lp``, ``milp``, ``mibp``), which cost seconds per epoch where the interval
step costs milliseconds.  Used by ``boundflow bench training`` and ``benchmarks/mibp_moons.py``.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings

import torch

import boundflow.train as T
from boundflow.atomic import atomic_savefig, atomic_write_text
from boundflow.bench.tightness import environment
from boundflow.errors import JobError
from boundflow.models import hidden_mlp as mlp
from solvers.executor import make_executor

__all__ = ["run_one", "run_cli", "load_split", "defaults", "SOLVER_METHODS"]

SOLVER_METHODS = ("lp", "milp", "mibp")
DATASETS = ("moons", "iris-2", "breast-cancer")
# parsed options that are not settings of the benchmark (not written into its command line)
_NOT_SETTINGS = ("func", "command", "bench", "argv", "start", "debug", "quiet", "verbose", "force", "threads")


def _med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def load_split(args, seed: int):
    """``(x_train, y_train, (x_val, y_val), (x_test, y_test))`` for ``args.dataset``.

    Two-Moons (noise 0.1): ``n_train / n_val / n_test`` points drawn with ``seed``.  ``iris-2``
    (versicolor against virginica, the two classes no line separates), ``breast-cancer``: the
    seeded stratified split of :func:`boundflow.train.load_dataset` (20% test), 20% of the
    training part held out for validation; features standardised on the training part."""
    name = args.dataset
    if name == "moons":
        n = args.n_train + args.n_val + args.n_test
        d = T.load_dataset("moons", seed=seed, n_samples=n, test_fraction=args.n_test / n)
        n_val = args.n_val
    elif name in ("iris-2", "breast-cancer"):
        d = T.load_dataset("iris" if name == "iris-2" else name, seed=seed, test_fraction=0.2)
        if name == "iris-2":
            d = _two_classes(d, (1, 2))
        n_val = int(round(0.2 * len(d.x_train)))
    else:
        raise JobError(f"{{dataset}} {name!r}: choose from moons, iris-2, breast-cancer")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(d.x_train), generator=g)
    tr, va = order[n_val:].sort().values, order[:n_val].sort().values
    return d.x_train[tr], d.y_train[tr], (d.x_train[va], d.y_train[va]), (d.x_test, d.y_test)


def _two_classes(d, classes):
    def keep(x, y):
        m = (y == classes[0]) | (y == classes[1])
        return x[m], (y[m] == classes[1]).long()

    xtr, ytr = keep(d.x_train, d.y_train)
    xte, yte = keep(d.x_test, d.y_test)
    return T.Dataset("iris-2", xtr, ytr, xte, yte)


def run_one(method: str, eps: float, seed: int, args, executor) -> dict:
    """One certified-training run: the kept box's test accuracy and the per-epoch curves."""
    x_tr, y_tr, val, test = load_split(args, seed)
    model = mlp(x_tr.shape[1], 1, args.hidden, 2, seed)
    cfg = T.TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=min(args.batch_size, len(x_tr)),
        loss=args.loss,
        seed=seed,
        step=method,
        workers=args.workers,
        time_limit=args.time_limit,
        decompose=args.group,
        keep_best=True,
        patience=args.patience,
    )
    data = T.linf(x_tr, y_tr, eps)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.TrainingDiverged)
        # one process pool shared by all runs: its start-up is not part of an epoch
        b = T.certified_training(model, data, cfg, test=test, executor=executor, val=val, val_eps=0.0)
    secs = time.perf_counter() - t0
    kept = b.best["epoch"] if b.best else 0
    kept_row = b.history[kept - 1] if kept else None
    method_c = getattr(args, "certify_method", "ibp")
    cert = kept_row["certified_accuracy"] if kept_row else None
    if kept_row and method_c != "ibp":  # the kept box's test predictions, certified by a tighter domain too
        kb = b.kept()
        a = T.certify(model, kb, test[0], test[1], 0.0).classes
        c = T.certify(model, kb, test[0], test[1], 0.0, method=method_c).classes
        either = torch.where(a >= 0, a, c)  # both are sound: where both certify, they agree
        cert = float((either == test[1]).double().mean())
    return {
        "method": method,
        "eps": eps,
        "seed": seed,
        "kept_epoch": kept,
        "kept_certified_accuracy": cert,
        "kept_certified_accuracy_ibp": kept_row["certified_accuracy"] if kept_row else None,
        "certify_method": method_c,
        "kept_nominal_accuracy": kept_row.get("nominal_accuracy") if kept_row else None,
        "kept_width": kept_row["mean_width"] if kept_row else None,
        "val_certified_accuracy_per_epoch": [h.get("val_certified_accuracy") for h in b.history],
        "certified_accuracy_per_epoch": [h["certified_accuracy"] for h in b.history],
        "width_per_epoch": [h["mean_width"] for h in b.history],
        "seconds_per_epoch": [h["seconds"] for h in b.history],
        "shrinking_params_per_step": [n for h in b.history for n in h.get("shrinking_params", [])],
        "parameters": sum(t.numel() for t in b.lower.values()),
        "stopped_at": b.stopped_at,
        "solver_status": b.history[-1].get("solver_status") if b.history else None,
        "seconds": secs,
    }


def defaults(args) -> None:
    """Fill the defaults that depend on ``--quick`` (method and radius lists as text)."""
    q = getattr(args, "quick", False)
    if args.methods is None:
        args.methods = "ibp,lp" if q else "ibp,lp,milp"
    if args.eps is None:
        args.eps = "1e-2" if q else "1e-4,1e-3,1e-2"
    if args.seeds is None:
        args.seeds = 1 if q else 10
    if args.epochs is None:
        args.epochs = 3 if q else 10


def _jobs(args, methods, epsilons, solver_eps):
    solver_eps = solver_eps or epsilons
    jobs = []
    for m in methods:
        solver = m in SOLVER_METHODS
        for e in solver_eps if solver else epsilons:
            n = args.solver_seeds if (solver and args.solver_seeds is not None) else args.seeds
            jobs += [(m, e, s) for s in range(n)]
    return jobs


def _check(args) -> None:
    """Every numeric setting, before any work (:class:`~boundflow.errors.JobError` naming it)."""
    problems = [
        (args.seeds >= 1, f"{{seeds}} must be >= 1, got {args.seeds}"),
        (args.epochs >= 1, f"{{epochs}} must be >= 1, got {args.epochs}"),
        (args.hidden >= 1, f"{{hidden}} must be >= 1, got {args.hidden}"),
        (args.lr > 0, f"{{lr}} must be > 0, got {args.lr}"),
        (args.group >= 1, f"{{group}} must be >= 1 samples per program, got {args.group}"),
        (args.patience is None or args.patience >= 1, f"{{patience}} must be >= 1, got {args.patience}"),
        (args.dataset in DATASETS, f"{{dataset}} {args.dataset!r}: choose from {', '.join(DATASETS)}"),
        (min(args.n_train, args.n_val, args.n_test) >= 1, "{n_train}, {n_val} and {n_test} must be >= 1"),
    ]
    for ok, msg in problems:
        if not ok:
            raise JobError(msg)


def summarise(runs: list[dict], methods: list[str], epsilons: list[float]) -> list[dict]:
    """One row per (method, eps): medians over seeds of the kept box's numbers."""
    rows = []
    for m in methods:
        for e in epsilons:
            rs = [r for r in runs if r["method"] == m and r["eps"] == e]
            if not rs:
                continue
            acc = [r["kept_certified_accuracy"] or 0.0 for r in rs]
            steps = [n for r in rs for n in r["shrinking_params_per_step"]]
            rows.append(
                {
                    "method": m,
                    "eps": e,
                    "seeds": len(rs),
                    "certified_accuracy": statistics.median(acc),
                    "certified_accuracy_mean": statistics.fmean(acc),
                    "certified_accuracy_min": min(acc),
                    "certified_accuracy_max": max(acc),
                    "kept_epoch": _med([r["kept_epoch"] for r in rs]),
                    "nominal_accuracy": _med([r["kept_nominal_accuracy"] for r in rs]),
                    "kept_width": _med([r["kept_width"] for r in rs]),
                    "shrinking_steps": sum(n > 0 for n in steps) if m in SOLVER_METHODS else None,
                    "solver_steps": len(steps) if m in SOLVER_METHODS else None,
                    "shrinking_params_median": _med(steps) if steps else None,
                    "parameters": rs[0]["parameters"],
                    "seconds_per_epoch": _med([_med(r["seconds_per_epoch"]) for r in rs]),
                }
            )
    return rows


def run_cli(args, methods: list[str], epsilons: list[float], solver_eps: list[float] | None = None) -> int:
    """``boundflow bench training``: run ``methods`` at radii ``epsilons`` (the solver methods at
    ``solver_eps`` if given), then write ``<name>.json``, ``.md`` and ``.png``.  ``args``: any
    object with the settings as attributes (those of ``boundflow bench training --help``, with
    ``_`` for ``-``); the command line parses the lists (:mod:`boundflow.cli.bench`)."""
    _check(args)
    from boundflow.outputs import claim

    name = getattr(args, "name", "training")
    out = claim(args.out, [f"{name}.json", f"{name}.md", f"{name}.png"], force=getattr(args, "force", False))
    from tqdm import tqdm

    jobs = _jobs(args, methods, epsilons, solver_eps)
    need_pool = any(m in SOLVER_METHODS for m, _, _ in jobs)
    executor = make_executor("process", args.workers) if need_pool else make_executor("serial")
    try:
        runs = [
            run_one(m, e, s, args, executor)
            for m, e, s in tqdm(jobs, desc="training tightness", unit="run", disable=args.no_progress)
        ]
    finally:
        executor.close()
    all_eps = sorted({e for _, e, _ in jobs})
    rows = summarise(runs, methods, all_eps)
    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    payload = {"benchmark": name, "args": settings, "environment": environment(), "rows": rows, "runs": runs}
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=1))
    lines = _markdown(args, settings, rows, name)
    atomic_write_text(out / f"{name}.md", "\n".join(lines))
    _plot(runs, methods, all_eps, out / f"{name}.png", args)
    print("\n".join(lines[6:-2]))
    print(f"wrote {out}/{name}.json, {name}.md, {name}.png")
    return 0


def _markdown(args, settings, rows, name) -> list[str]:
    skip = ("cmd", "quick", "no_progress") + (("name",) if name in ("training", "mibp_moons") else ())
    cmd = (
        getattr(args, "cmd", "boundflow bench training")
        + " "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in settings.items() if v not in (None, False) and k not in skip
        )
    )
    if args.dataset == "moons":
        data = f"Two-Moons (noise 0.1): {args.n_train} training, {args.n_val} validation, {args.n_test} test points"
    else:
        data = f"{args.dataset} (seeded 80/20 split, 20% of the training part for validation, standardised)"
    par = rows[0]["parameters"] if rows else "?"
    lines = [
        f"# Interval vs solver-based certified training: {args.dataset}",
        "",
        f"Command: `{cmd}`",
        "",
        f"{data}; MLP with one hidden layer of {args.hidden} ReLUs ({par} parameters), batch {args.batch_size}, "
        f"{args.loss}, lr {args.lr}, up to {args.epochs} epochs, the box kept at the best validation certified "
        f"accuracy, stopped after {args.patience} epochs without improvement; every training point within eps in "
        f"l-inf.  Solver steps: programs of {args.group} samples sharing one copy of the parameters, "
        f"{args.time_limit} s per solve, the solver box intersected with the interval step's.  "
        "**Certified accuracy**: test points whose prediction is correct for every parameter vector in the kept "
        "box (median over seeds, with mean and range)"
        + (
            f", by interval bounds or by {args.certify_method} with bounded weights (either certifies)"
            if getattr(args, "certify_method", "ibp") != "ibp"
            else ""
        )
        + ".  Shrinking steps: solver steps after which some parameter's "
        "box is strictly narrower than before the step.  Seconds per epoch: wall clock on this 2-core machine "
        f"with {args.workers} solver processes (MIBP-Cert reports 19-156 s per epoch on up to 32 cores with "
        "Gurobi).",
        "",
        "| method | eps | seeds | certified acc. (median) | mean | min-max | kept epoch | nominal acc. "
        "| kept mean width | shrinking steps | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shr = "-" if r["solver_steps"] is None else f"{r['shrinking_steps']}/{r['solver_steps']}"
        nom = "-" if r["nominal_accuracy"] is None else f"{r['nominal_accuracy']:.3f}"
        lines.append(
            f"| {r['method']} | {r['eps']:g} | {r['seeds']} | **{r['certified_accuracy']:.3f}** | "
            f"{r['certified_accuracy_mean']:.3f} | {r['certified_accuracy_min']:.3f}-{r['certified_accuracy_max']:.3f} "
            f"| {r['kept_epoch']:g} | {nom} | {r['kept_width']:.3g} | {shr} | {r['seconds_per_epoch']:.2f} |"
        )
    lines += ["", f"![certified accuracy and width per epoch]({name}.png)", ""]
    return lines


def _plot(runs, methods, epsilons, path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(epsilons), figsize=(4.2 * len(epsilons), 7), squeeze=False)
    for j, e in enumerate(epsilons):
        for i, m in enumerate(methods):
            rs = [r for r in runs if r["method"] == m and r["eps"] == e]
            if not rs:
                continue
            n = max(len(r["width_per_epoch"]) for r in rs)
            ep = list(range(1, n + 1))

            # a run stopped early counts with its last box for the remaining epochs
            def at(key, k):
                return statistics.median(r[key][min(k, len(r[key]) - 1)] for r in rs)

            acc = [at("certified_accuracy_per_epoch", k) for k in range(n)]
            wid = [at("width_per_epoch", k) for k in range(n)]
            axes[0, j].plot(ep, acc, marker="o", ms=3, color=f"C{i}", label=m)
            axes[1, j].plot(ep, wid, marker="o", ms=3, color=f"C{i}", label=m)
        axes[0, j].set_title(f"{args.dataset}, eps = {e:g}")
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("epoch")
        for a in axes[:, j]:
            a.grid(alpha=0.3)
    axes[0, 0].set_ylabel("certified test accuracy (median over seeds)")
    axes[1, 0].set_ylabel("mean parameter-bound width (median, log)")
    handles = {}
    for a in axes.ravel():
        for h, lab in zip(*a.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    axes[0, -1].legend(handles.values(), handles.keys(), title="method")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
