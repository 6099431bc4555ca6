"""Interval overhead: plain torch forward+backward vs interval forward+backward (interval inputs
*and* interval parameters), same model, same batch, measured in one run.

    python benchmarks/interval_overhead.py [--repeats 30] [--dtype float32] [--json out.json] [--profile]

Prints the median time of each and their ratio per model.  Target: <= 3x plain torch in float32
on CPU (the midpoint-radius product needs three products of the plain kind).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import boundflow as bf
from boundflow.atomic import atomic_write_json


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def _step(model, params, x, y):
    """One forward+backward: the same code for plain tensors and for interval tensors."""
    for p in params.values():
        p.grad = None
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    loss.backward()


_plain_step = _interval_step = _step


def measure(name: str, model: nn.Module, x: torch.Tensor, repeats: int, eps: float = 0.01) -> dict:
    torch.manual_seed(0)
    y = torch.randint(0, 10, (x.shape[0],))
    plain = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    iv = bf.interval_parameters(model, radius=1e-3)
    xi = bf.IntervalTensor.from_eps(x, eps)
    times = {"plain": [], "interval": []}
    for _ in range(3):  # warm-up
        _plain_step(model, plain, x, y)
        _interval_step(model, iv, xi, y)
    for _ in range(repeats):  # interleaved so both see the same machine state
        t0 = time.perf_counter()
        _plain_step(model, plain, x, y)
        t1 = time.perf_counter()
        _interval_step(model, iv, xi, y)
        t2 = time.perf_counter()
        times["plain"].append(t1 - t0)
        times["interval"].append(t2 - t1)
    med_p, med_i = statistics.median(times["plain"]), statistics.median(times["interval"])
    return {
        "model": name,
        "batch": x.shape[0],
        "plain_ms": med_p * 1e3,
        "interval_ms": med_i * 1e3,
        "ratio": med_i / med_p,
        "ratios_per_repeat": [b / a for a, b in zip(times["plain"], times["interval"])],
    }


def profile(model: nn.Module, x: torch.Tensor, steps: int = 5, rows: int = 18) -> str:
    """The torch.profiler table (ops by self CPU time) of ``steps`` interval steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    y = torch.randint(0, 10, (x.shape[0],))
    iv = bf.interval_parameters(model, radius=1e-3)
    xi = bf.IntervalTensor.from_eps(x, 0.01)
    _interval_step(model, iv, xi, y)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            _interval_step(model, iv, xi, y)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json", default=None, help="write all numbers here (atomically)")
    ap.add_argument("--profile", action="store_true", help="also print where an interval step's time goes")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    rows = [
        measure("MLP 784-256-256-10", mlp(), torch.rand(args.batch, 784), args.repeats),
        measure("CNN conv16-conv32-fc", cnn(), torch.rand(args.batch // 4, 1, 28, 28), args.repeats),
    ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, {args.repeats} repeats, medians"
    )
    print(f"{'model':<24} {'batch':>5} {'plain ms':>9} {'interval ms':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:<24} {r['batch']:>5} {r['plain_ms']:>9.2f} {r['interval_ms']:>12.2f} {r['ratio']:>5.2f}x")
    if args.profile:
        for name, model, x in (("MLP 784-256-256-10", mlp(), torch.rand(args.batch, 784)),
                               ("CNN conv16-conv32-fc", cnn(), torch.rand(args.batch // 4, 1, 28, 28))):  # fmt: skip
            print(f"\n{name}: torch.profiler, 5 interval steps, ops by self CPU time")
            print(profile(model, x))
    if args.json:
        payload = {
            "benchmark": "interval_overhead",
            "dtype": args.dtype,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.platform(),
            "rows": rows,
        }
        atomic_write_json(args.json, payload)


if __name__ == "__main__":
    main()
