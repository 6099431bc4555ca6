"""FullCert on Two-Moons, side by side with the reference implementation's own configurations.

    python benchmarks/fullcert_moons.py [--seeds 10] [--epochs 200] [--lr-ref 0.5]
        [--reference FULLCERT/code] [--out docs/benchmarks]

The configuration of t-lorenz/FullCert's ``hyperparameter_experiments/epsilon.sh``: Two-Moons
with 1000 training, 200 validation and 200 test points (separate draws, noise 0.1), MLPs 2-20-1
and 2-20-20-1, BCE, batch 100, eps in {1e-4, 1e-3, 1e-2, 1e-1} on every training point, the
validation and test points perturbed by eps too (``--perturb-inference``), up to 200 epochs,
the box with the best validation certified accuracy kept and training stopped once it falls
5 points below the best (the reference's ``early_stopping``).

Gradient scaling, made explicit: the reference's losses divide their gradient by the batch size
B and its linear layers divide theirs by B again, so its update is ``lr_ref / B`` times the
gradient of the *mean* loss; a reference run with ``--learning-rate lr_ref`` is ours with
``lr = lr_ref / B`` (0.5 / 100 = 0.005 here).

``--reference DIR``: also run the reference itself (its ``certified_training.py``, 2-20-1 only:
the reference builds one hidden layer) on the same eps, seeds and epochs, in a subprocess,
and report its test certified accuracy and wall time; it needs ``typeguard`` importable (and
``torchvision``, which only its MNIST loaders use).  Prints and writes fullcert_moons.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402
from _common import median as _med  # noqa: E402

import boundflow.train as T  # noqa: E402
from boundflow.atomic import atomic_savefig  # noqa: E402
from boundflow.models import hidden_mlp as mlp  # noqa: E402

EPSILONS = (1e-4, 1e-3, 1e-2, 1e-1)
MODELS = {"2-20-1": 2, "2-20-20-1": 3}
BATCH = 100


def moons(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=0.1, shuffle=True, random_state=seed)
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.int64)


def run(model_name: str, eps: float, seed: int, epochs: int, lr_ref: float) -> dict:
    x, y = moons(1000, seed)
    val = moons(200, 10_000 + seed)
    test = moons(200, 20_000 + seed)
    model = mlp(2, 1, 20, MODELS[model_name], seed)
    cfg = T.TrainConfig(
        epochs=epochs,
        lr=lr_ref / BATCH,
        batch_size=BATCH,
        loss="bce",
        seed=seed,
        shuffle=True,
        keep_best=True,
        stop_drop=0.05,
    )
    t0 = time.perf_counter()
    b = T.certified_training(model, T.linf(x, y, eps), cfg, test=test, test_eps=eps, val=val, val_eps=eps)
    seconds = time.perf_counter() - t0
    kept = b.kept()
    cert = T.certify(model, kept, test[0], test[1], eps)
    return {
        "model": model_name,
        "eps": eps,
        "seed": seed,
        "val_certified_accuracy_per_epoch": [h["val_certified_accuracy"] for h in b.history],
        "test_certified_accuracy_per_epoch": [h["certified_accuracy"] for h in b.history],
        "seconds_per_epoch": [h["seconds"] for h in b.history],
        "kept_epoch": kept.epochs_done,
        "epochs_run": b.epochs_done,
        "kept_test_certified_accuracy": cert.accuracy,
        "last_test_certified_accuracy": b.history[-1]["certified_accuracy"],
        "seconds": seconds,
    }


def run_reference(code: Path, eps: float, seed: int, epochs: int, lr_ref: float) -> dict:
    """The reference's own run (2-20-1), its reported test certified accuracy and wall time."""
    cmd = [
        sys.executable,
        "certified_training.py",
        "--batch-size",
        str(BATCH),
        "--learning-rate",
        str(lr_ref),
        "--epochs",
        str(epochs),
        "--epsilon",
        str(eps),
        "--hidden-nodes",
        "20",
        "--dataset",
        "moons",
        "--experiment",
        f"boundflow_side_by_side_eps_{eps:g}_seed_{seed}",
        "--seed",
        str(seed),
        "--loss",
        "bce",
        "--perturb-inference",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    text = res.stdout + res.stderr
    found = re.search(r"Test certified accuracy: ([0-9.]+)%", text)
    # the reference keeps a model only from an epoch with validation certified accuracy > 0;
    # without one it stops on a type error (its best model is None): nothing certified
    none_kept = "return value[1] must be boundflow.network.Model; got NoneType" in text
    if not none_kept and (res.returncode != 0 or not found):
        raise SystemExit(f"error: the reference run failed ({' '.join(cmd)}):\n{text[-2000:]}")
    val = re.search(r"Validation certified accuracy: ([0-9.]+)%", text)
    return {
        "eps": eps,
        "seed": seed,
        "test_certified_accuracy": 0.0 if none_kept else float(found.group(1)) / 100,
        "val_certified_accuracy": 0.0 if none_kept else (float(val.group(1)) / 100 if val else None),
        "kept_none": none_kept,
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--lr-ref", type=float, default=0.5, help="the reference's learning rate (ours: lr_ref / 100)")
    ap.add_argument("--reference", type=Path, default=None, help="the reference's code/ folder (t-lorenz/FullCert)")
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args()
    if args.reference is not None and not (args.reference / "certified_training.py").exists():
        raise SystemExit(f"error: --reference {args.reference}: no certified_training.py there")
    if args.seeds < 1 or args.epochs < 1:
        raise SystemExit("error: --seeds and --epochs must be >= 1")
    from tqdm import tqdm

    ref_runs = []
    if args.reference is not None:
        ref_jobs = [(e, s) for e in EPSILONS for s in range(args.seeds)]
        for e, s in tqdm(ref_jobs, desc="reference", unit="run"):
            ref_runs.append(run_reference(args.reference.resolve(), e, s, args.epochs, args.lr_ref))
    jobs = [(m, e, s) for m in MODELS for e in EPSILONS for s in range(args.seeds)]
    runs = [run(m, e, s, args.epochs, args.lr_ref) for m, e, s in tqdm(jobs, desc="boundflow", unit="run")]
    rows = []
    for m in MODELS:
        for e in EPSILONS:
            rs = [r for r in runs if r["model"] == m and r["eps"] == e]
            refs = [r for r in ref_runs if r["eps"] == e] if m == "2-20-1" else []
            rows.append(
                {
                    "model": m,
                    "eps": e,
                    "seeds": len(rs),
                    "kept_test_certified_accuracy": _med([r["kept_test_certified_accuracy"] for r in rs]),
                    "last_test_certified_accuracy": _med([r["last_test_certified_accuracy"] for r in rs]),
                    "kept_epoch": _med([r["kept_epoch"] for r in rs]),
                    "epochs_run": _med([r["epochs_run"] for r in rs]),
                    "seconds_per_epoch": _med([_med(r["seconds_per_epoch"]) for r in rs]),
                    "seconds": _med([r["seconds"] for r in rs]),
                    "reference_test_certified_accuracy": _med([r["test_certified_accuracy"] for r in refs]),
                    "reference_seconds": _med([r["seconds"] for r in refs]),
                }
            )
    out = Path(args.out)
    write_json(
        out / "fullcert_moons.json",
        {
            "benchmark": "fullcert_moons",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": environment(),
            "rows": rows,
            "runs": runs,
            "reference_runs": ref_runs,
        },
    )
    write_text(out / "fullcert_moons.md", report(rows, args.seeds, args.epochs, args.lr_ref, args.reference, args.out))
    _plot(runs, ref_runs, out / "fullcert_moons.png")
    print(report(rows, args.seeds, args.epochs, args.lr_ref, args.reference, args.out))


def report(rows, seeds: int, epochs: int, lr_ref: float, reference, out: str) -> str:
    """The Markdown page of a run (also rebuilt from its JSON)."""
    cmd = f"python benchmarks/fullcert_moons.py --seeds {seeds} --epochs {epochs} --lr-ref {lr_ref}"
    cmd += (" --reference FULLCERT/code" if reference else "") + f" --out {out}"

    def f(v, fmt=".3f"):
        return "–" if v is None else format(v, fmt)

    lines = [
        "# FullCert on Two-Moons, side by side with the reference",
        "",
        f"Command: `{cmd}`",
        "",
        f"The reference's configuration (t-lorenz/FullCert `epsilon.sh`): 1000/200/200 points, noise 0.1, BCE, "
        f"batch {BATCH}, up to {epochs} epochs, validation and test points perturbed by eps, the box with the "
        f"best validation certified accuracy kept, training stopped 5 points below the best. Our learning rate is "
        f"the reference's {lr_ref} / {BATCH} = {lr_ref / BATCH:g} (its losses and layers each divide by "
        f"the batch size). Medians over {seeds} seeds; certified accuracy: test points certified correct for "
        "every parameter vector in the box and every input within eps. *Last* is the last epoch's box (what a run "
        "without selection would keep).",
        "",
        "| model | eps | kept cert. acc. | kept epoch | epochs run | last cert. acc. | s/epoch | s/run "
        "| reference cert. acc. | reference s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['eps']:g} | {f(r['kept_test_certified_accuracy'])} | {f(r['kept_epoch'], '.0f')} | "
            f"{f(r['epochs_run'], '.0f')} | {f(r['last_test_certified_accuracy'])} | "
            f"{f(r['seconds_per_epoch'], '.3f')} | {f(r['seconds'], '.1f')} | "
            f"{f(r['reference_test_certified_accuracy'])} | {f(r['reference_seconds'], '.1f')} |"
        )
    lines += [
        "",
        "The reference ran from its own repository (commit 6df624c) with this project's torch, `typeguard` 2.13 "
        "and a stand-in for `torchvision` (which only its MNIST loaders use); its seconds include its interpreter "
        "start (about 2.4 s). Where no epoch certifies any validation point the reference keeps no model and "
        "stops with a type error; such runs count as 0 (eps 0.1: see `reference_runs` in the JSON). The "
        "reference initialises and draws its data with its own generator, so per-seed runs differ; the medians "
        "compare. Plot: median test certified accuracy per epoch (a stopped run carries its kept accuracy on), "
        "the reference's kept accuracy dashed; seconds per epoch and per run.",
        "",
        "![certified accuracy per epoch](fullcert_moons.png)",
        "",
    ]
    return "\n".join(lines)


def _plot(runs, ref_runs, path):
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, m in zip(axes[:2], MODELS):
        for i, e in enumerate(EPSILONS):
            rs = [r for r in runs if r["model"] == m and r["eps"] == e]
            n = max(len(r["test_certified_accuracy_per_epoch"]) for r in rs)
            # a run that stopped keeps its kept box: carry its kept accuracy on
            curves = []
            for r in rs:
                c = r["test_certified_accuracy_per_epoch"]
                curves.append(c + [r["kept_test_certified_accuracy"]] * (n - len(c)))
            med = [statistics.median(c[k] for c in curves) for k in range(n)]
            ax.plot(range(1, n + 1), med, color=f"C{i}", label=f"eps = {e:g}")
            refs = [r["test_certified_accuracy"] for r in ref_runs if r["eps"] == e]
            if refs and m == "2-20-1":
                ax.axhline(statistics.median(refs), color=f"C{i}", ls="--", lw=0.8)
        ax.set_title(f"MLP {m}" + (" (dashed: reference, kept box)" if ref_runs and m == "2-20-1" else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test certified accuracy (median over seeds)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    ax = axes[2]
    for j, m in enumerate(MODELS):
        per = [statistics.median(r["seconds_per_epoch"]) for r in runs if r["model"] == m]
        ax.bar(j, statistics.median(per), color=f"C{j}", label=f"BoundFlow {m}, s/epoch")
    if ref_runs:
        ours = {r["seed"]: r for r in runs if r["model"] == "2-20-1"}
        ax.bar(2, statistics.median(r["seconds"] for r in ref_runs), color="grey", label="reference 2-20-1, s/run")
        ax.bar(3, statistics.median(r["seconds"] for r in ours.values()), color="C0", alpha=0.5, label="ours, s/run")
    ax.set_title("seconds (median)")
    ax.set_xticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
