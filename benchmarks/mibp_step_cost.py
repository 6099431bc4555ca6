"""What each way of running a solver step (MIBP-Cert) costs and buys: one LP step of the
Two-Moons benchmark's setting (100 points, MLP 2-8-1, BCE, lr 2, eps 0.01, from the box the
interval step reaches after two epochs), timed in one run (medians of ``--repeats``).

    python benchmarks/mibp_step_cost.py [--repeats 3] [--mode lp] [--json out.json]
    python benchmarks/mibp_step_cost.py --milp-step [--repeats 3] [--json out.json]

``--milp-step``: the MILP step of issue 32's target instead — MLP 2-6-1, a batch of 40 Two-Moons
points, one joint program, hinge loss, eps 0.01, lr 0.5, from the interval box after two
steps — with the executors and chunkings that can speed it up (target: 3 s on 2 cores).

Rows, each against the default (programs of 10 samples, 16 objectives per solver instance,
one process):

- ``group`` G: samples per program (1: per-sample programs; 100: MIBP-Cert's joint program);
  the mean width of the step's box says what the coupling buys.
- ``chunk`` C: objectives solved in turn by one solver instance built once (warm start from
  the previous objective's basis); ``chunk 1`` rebuilds the program for every objective.
- ``workers`` W: solver processes (``solvers.make_executor("process", W)``); on this 2-core
  machine 2 is the most that can pay.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

import boundflow.train as T  # noqa: E402
from boundflow.encode.training_step import build_step  # noqa: E402
from boundflow.models import hidden_mlp as mlp  # noqa: E402
from solvers.executor import make_executor, minimize_all  # noqa: E402


def start_box(eps: float):
    """The Two-Moons data and the interval box after two epochs (the step the rows time)."""
    d = T.load_dataset("moons", seed=0, n_samples=500, test_fraction=0.4)
    x, y = d.x_train[:100], d.y_train[:100]
    model = mlp(2, 1, 8, 2, 0)
    cfg = T.TrainConfig(epochs=2, lr=2.0, batch_size=100, loss="bce")
    b = T.certified_training(model, T.linf(x, y, eps), cfg, track_nominal=False)
    return model.double(), b.lower, b.upper, x, y


def milp_box(eps: float, steps: int = 2):
    """The MILP-step problem: 40 Two-Moons points, 2-6-1, hinge, the interval box after ``steps`` steps."""
    d = T.load_dataset("moons", seed=1, n_samples=200, test_fraction=0.5)
    x, y = d.x_train[:40], d.y_train[:40]
    model = mlp(2, 1, 6, 2, 1)
    cfg = T.TrainConfig(epochs=steps, lr=0.5, batch_size=40, loss="hinge")
    b = T.certified_training(model, T.linf(x, y, eps), cfg, track_nominal=False)
    return model.double(), b.lower, b.upper, x, y


def one_step(model, lo, hi, x, y, eps, mode, group, chunk, executor, loss="bce", lr=2.0):
    t0 = time.perf_counter()
    progs = build_step(model, lo, hi, x - eps, x + eps, y, loss, lr, 0.0, decompose=group)
    tasks = []
    for sp in progs:
        objs = []
        for n in sp.objectives:
            for idx, val in sp.objectives[n]:
                objs += [(idx, val), (idx, -val)]
        tasks.append((sp.program, objs))
    res = minimize_all(tasks, mode, executor, None, chunk=chunk)
    secs = time.perf_counter() - t0
    lo_sum = [sum(r[i].bound for r in res) for i in range(0, len(res[0]), 2)]
    hi_sum = [-sum(r[i].bound for r in res) for i in range(1, len(res[0]), 2)]
    width = statistics.fmean(h - lo_ for lo_, h in zip(lo_sum, hi_sum))
    return secs, width, sum(len(t[1]) for t in tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="lp", choices=["lp", "milp"])
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--json", default=None)
    ap.add_argument("--milp-step", action="store_true", help="time the 2-6-1 / batch 40 / hinge joint MILP step")
    ap.add_argument("--milp-steps", type=int, default=2, help="interval steps before the timed MILP step (default: 2)")
    args = ap.parse_args()
    if args.milp_step:
        return milp_step(args)
    model, lo, hi, x, y = start_box(args.eps)
    before = statistics.fmean(float((hi[n] - lo[n]).mean()) for n in lo)
    serial = make_executor("serial")
    pool = make_executor("process", 2)

    def step(group, chunk, ex):
        return lambda: one_step(model, lo, hi, x, y, args.eps, args.mode, group, chunk, ex)

    configs = [  # the joint program: one repeat
        (name, args.repeats if group < 100 else 1, step(group, chunk, ex))
        for name, group, chunk, ex in [
            ("default: group 10, chunk 16, 1 process", 10, 16, serial),
            ("group 1 (per-sample programs)", 1, 16, serial),
            ("group 25", 25, 16, serial),
            ("group 100 (joint program)", 100, 16, serial),
            ("chunk 1 (rebuilt per objective)", 10, 1, serial),
            ("chunk 66 (one instance per program)", 10, 66, serial),
            ("2 worker processes", 10, 16, pool),
        ]
    ]
    rows = _time(configs, pool)
    head = [
        f"torch {torch.__version__}; {args.mode} step, Two-Moons 100 points, 2-8-1, eps {args.eps}; medians",
        f"mean width before the step {before:.4g} (interval box after 2 epochs)",
    ]
    _report(rows, head, "vs default", args.json, "mibp_step_cost")


def _time(configs, pool) -> list[dict]:
    """``configs``: ``(name, repeats, step)`` with ``step() -> (seconds, width, solves)``; the
    median seconds of each, in one run (the pool's start-up is not part of a step)."""
    rows = []
    try:
        pool.warm(abs, 0)
        for name, repeats, step in configs:
            times, width, solves = [], None, 0
            for _ in range(repeats):
                secs, width, solves = step()
                times.append(secs)
            rows.append({"option": name, "seconds": statistics.median(times), "mean_width": width, "solves": solves})
            print(f"  {name}: {rows[-1]['seconds']:.2f} s", flush=True)
    finally:
        pool.close()
    return rows


def _report(rows: list[dict], head: list[str], against: str, json_path, name: str) -> None:
    """The table, each row's seconds against the first row's; the JSON if asked."""
    base = rows[0]["seconds"]
    w = max(len(r["option"]) for r in rows) + 2
    print("\n".join(head))
    print(f"{'option':<{w}} {'solves':>7} {'seconds':>8} {against:>10} {'mean width':>11}")
    for r in rows:
        ratio = r["seconds"] / base
        print(f"{r['option']:<{w}} {r['solves']:>7} {r['seconds']:>8.2f} {ratio:>9.2f}x {r['mean_width']:>11.4g}")
    if json_path:
        write_json(json_path, {"benchmark": name, "environment": environment(), "rows": rows})


def milp_step(args) -> None:
    """Rows for the joint MILP step of a 2-6-1 network on 40 points (hinge)."""
    model, lo, hi, x, y = milp_box(args.eps, args.milp_steps)
    before = statistics.fmean(float((hi[n] - lo[n]).mean()) for n in lo)
    serial = make_executor("serial")
    pool = make_executor("process", 2)

    def step(mode, chunk, ex):
        return lambda: one_step(model, lo, hi, x, y, args.eps, mode, 100, chunk, ex, "hinge", 0.5)

    configs = [
        (name, args.repeats, step(mode, chunk, ex))
        for name, mode, chunk, ex in [
            ("joint MILP, chunk 16, 1 process", "milp", 16, serial),
            ("joint MILP, chunk 13, 2 processes", "milp", 13, pool),
            ("joint MILP, one instance (chunk 50), 1 process", "milp", 50, serial),
            ("joint LP, chunk 16, 1 process", "lp", 16, serial),
        ]
    ]
    rows = _time(configs, pool)
    head = [
        f"torch {torch.__version__}; joint step, Two-Moons 40 points, 2-6-1, hinge, eps {args.eps}; medians",
        f"mean width before the step {before:.4g} (interval box after {args.milp_steps} steps); target 3 s",
    ]
    _report(rows, head, "vs first", args.json, "mibp_step_cost --milp-step")


if __name__ == "__main__":
    main()
