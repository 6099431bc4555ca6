"""One epoch of certified training vs one epoch of plain torch training, same model, data,
batches and loss, measured in one run (interleaved repeats, medians).

    python benchmarks/training_overhead.py [--repeats 7] [--json out.json]

``certified_training`` is timed as users call it (interval epoch plus the nominal run it keeps
alongside) and with ``track_nominal=False`` (the interval epoch alone).  Target: at most 4x.

k-of-n poisoning (``T.poison(k=5)``) needs per-sample gradient bounds: the epoch with the batched
per-sample gradients (one backward pass, outer products) against the one-sample-at-a-time loop
it replaced (``trainer._per_sample_grads_loop``), same bounds (to rounding: the largest
relative difference is printed), in the same run; the same for a small CNN (two convolutions,
a linear head), whose per-sample gradients are batched too.
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
from boundflow.models import hidden_mlp as mlp  # noqa: E402


class DigitsCNN(torch.nn.Module):
    """conv 1->8 (3x3, pad 1) - ReLU - conv 8->8 (3x3, stride 2, pad 1) - ReLU - linear on 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.a(x.reshape(-1, 1, 8, 8)))
        return self.head(torch.flatten(torch.relu(self.b(x)), 1))


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


def measure_kofn(name, model, x, y, cfg, eps, k, repeats) -> dict:
    from boundflow.train import trainer

    data = T.poison(x, y, k=k, eps=eps)
    batched = trainer._per_sample_grads
    tb, tl, tp = [], [], []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        fast = T.certified_training(model, data, cfg, track_nominal=False)
        t1 = time.perf_counter()
        trainer._per_sample_grads = trainer._per_sample_grads_loop
        try:
            slow = T.certified_training(model, data, cfg, track_nominal=False)
        finally:
            trainer._per_sample_grads = batched
        t2 = time.perf_counter()
        plain_epoch(model, x, y, cfg)
        t3 = time.perf_counter()
        if r:  # the first round warms up
            tb.append(t1 - t0)
            tl.append(t2 - t1)
            tp.append(t3 - t2)

    def rel(a, b):  # relative difference (the bounds of a long run can be far from 1)
        return float(((a - b).abs() / torch.maximum(a.abs().maximum(b.abs()), torch.ones_like(a))).max())

    diff = max(max(rel(fast.upper[n], slow.upper[n]), rel(fast.lower[n], slow.lower[n])) for n in fast.upper)
    mb, ml, mp = statistics.median(tb), statistics.median(tl), statistics.median(tp)
    return {
        "case": name,
        "k": k,
        "batched_ms": mb * 1e3,
        "loop_ms": ml * 1e3,
        "plain_ms": mp * 1e3,
        "speedup": ml / mb,
        "ratio_to_plain": mb / mp,
        "max_relative_bound_difference": diff,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    moons = T.load_dataset("moons", n_samples=1250, test_fraction=0.2)
    digits = T.load_dataset("digits")
    cases = [  # (name, model, x, y, config): the same two cases for both tables
        (
            "Two-Moons, MLP 2-20-20-1, BCE",
            mlp(2, 1, 20, 3, 0),
            moons.x_train,
            moons.y_train,
            T.TrainConfig(epochs=1, lr=0.5, batch_size=100, loss="bce"),
        ),
        (
            "digits, MLP 64-256-256-10, CE",
            mlp(64, 10, 256, 3, 0),
            digits.x_train,
            digits.y_train,
            T.TrainConfig(epochs=1, lr=0.1, batch_size=128, loss="cross_entropy"),
        ),
    ]
    rows = [measure(*case, 0.01, args.repeats) for case in cases]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, {args.repeats} repeats, medians")
    print(f"{'case':<34} {'plain ms':>9} {'certified ms':>13} {'ratio':>6} {'interval-only ms':>17} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['case']:<34} {r['plain_ms']:>9.1f} {r['certified_ms']:>13.1f} {r['ratio']:>5.2f}x "
            f"{r['interval_only_ms']:>17.1f} {r['ratio_interval_only']:>5.2f}x"
        )
    cnn = (
        "digits, CNN conv8-conv8s2-fc10, CE",
        DigitsCNN().double(),
        digits.x_train,
        digits.y_train,
        T.TrainConfig(epochs=1, lr=0.1, batch_size=128, loss="cross_entropy"),
    )
    kofn = [measure_kofn(*case, 0.01, 5, args.repeats) for case in [*cases, cnn]]
    print()
    print("k-of-n poisoning (k=5), one certified epoch without the nominal run:")
    print(f"{'case':<34} {'loop ms':>9} {'batched ms':>11} {'speedup':>8} {'vs plain':>9} {'max rel diff':>13}")
    for r in kofn:
        print(
            f"{r['case']:<34} {r['loop_ms']:>9.1f} {r['batched_ms']:>11.1f} {r['speedup']:>7.1f}x "
            f"{r['ratio_to_plain']:>8.1f}x {r['max_relative_bound_difference']:>13.2g}"
        )
    if args.json:
        payload = {"benchmark": "training_overhead", "environment": environment(), "rows": rows, "k_of_n": kofn}
        write_json(args.json, payload)


if __name__ == "__main__":
    main()
