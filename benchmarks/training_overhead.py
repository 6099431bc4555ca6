"""One epoch of certified training vs one epoch of plain torch training, same model, data,
batches and loss, measured in one run (interleaved repeats, medians).

    python benchmarks/training_overhead.py [--repeats 7] [--json out.json]

``certified_training`` is timed as users call it (interval epoch plus the nominal run it keeps
alongside) and with ``track_nominal=False`` (the interval epoch alone).  Target: at most 4x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import boundflow.train as T  # noqa: E402
from boundflow.train.cli import mlp  # noqa: E402


def plain_epoch(model, x, y, cfg) -> None:
    p = {n: t.detach().clone().requires_grad_(True) for n, t in model.named_parameters()}
    opt = torch.optim.SGD(list(p.values()), lr=cfg.lr)
    for idx in T.batch_indices(len(x), cfg, 0):
        opt.zero_grad()
        T.plain_loss(functional_call(model, p, (x[idx],)), y[idx], cfg.loss).backward()
        opt.step()


def measure(name, model, x, y, cfg, eps, repeats) -> dict:
    data = T.linf(x, y, eps)
    tp, tc, ti = [], [], []
    plain_epoch(model, x, y, cfg)
    T.certified_training(model, data, cfg)
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain_epoch(model, x, y, cfg)
        t1 = time.perf_counter()
        T.certified_training(model, data, cfg)
        t2 = time.perf_counter()
        T.certified_training(model, data, cfg, track_nominal=False)
        t3 = time.perf_counter()
        tp.append(t1 - t0)
        tc.append(t2 - t1)
        ti.append(t3 - t2)
    mp, mc, mi = statistics.median(tp), statistics.median(tc), statistics.median(ti)
    return {
        "case": name,
        "samples": len(x),
        "batch": cfg.batch_size,
        "plain_ms": mp * 1e3,
        "certified_ms": mc * 1e3,
        "interval_only_ms": mi * 1e3,
        "ratio": mc / mp,
        "ratio_interval_only": mi / mp,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    moons = T.load_dataset("moons", n_samples=1250, test_fraction=0.2)
    digits = T.load_dataset("digits")
    rows = [
        measure(
            "Two-Moons, MLP 2-20-20-1, BCE",
            mlp(2, 1, 20, 3, 0),
            moons.x_train,
            moons.y_train,
            T.TrainConfig(epochs=1, lr=0.5, batch_size=100, loss="bce"),
            0.01,
            args.repeats,
        ),
        measure(
            "digits, MLP 64-256-256-10, CE",
            mlp(64, 10, 256, 3, 0),
            digits.x_train,
            digits.y_train,
            T.TrainConfig(epochs=1, lr=0.1, batch_size=128, loss="cross_entropy"),
            0.01,
            args.repeats,
        ),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, {args.repeats} repeats, medians")
    print(f"{'case':<34} {'plain ms':>9} {'certified ms':>13} {'ratio':>6} {'interval-only ms':>17} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['case']:<34} {r['plain_ms']:>9.1f} {r['certified_ms']:>13.1f} {r['ratio']:>5.2f}x "
            f"{r['interval_only_ms']:>17.1f} {r['ratio_interval_only']:>5.2f}x"
        )
    if args.json:
        write_json(args.json, {"benchmark": "training_overhead", "environment": environment(), "rows": rows})


if __name__ == "__main__":
    main()
