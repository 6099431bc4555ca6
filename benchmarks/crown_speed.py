"""CROWN against IBP time on an MLP 784-256-256-256-10, batch 32, eps 0.01 (float32 and float64):
median of ``--repeats`` calls each, and the ratio, in one run.

    python benchmarks/crown_speed.py [--repeats 5] [--out docs/benchmarks]

Writes crown_speed.json and crown_speed.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

import boundflow as bf  # noqa: E402


def _median_time(f, repeats: int) -> float:
    f()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="docs/benchmarks")
    args = ap.parse_args()
    torch.manual_seed(0)
    layers = [nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()]
    m = nn.Sequential(*layers, nn.Linear(256, 10))
    x = torch.rand(32, 784)
    rows = []
    for dt in (torch.float32, torch.float64):
        ti = _median_time(lambda: bf.compute_bounds(m, x - 0.01, x + 0.01, method="ibp", dtype=dt), args.repeats)
        tc = _median_time(lambda: bf.compute_bounds(m, x - 0.01, x + 0.01, method="crown", dtype=dt), args.repeats)
        rows.append(
            {"dtype": str(dt).replace("torch.", ""), "ibp_ms": ti * 1e3, "crown_ms": tc * 1e3, "ratio": tc / ti}
        )
    out = Path(args.out)
    write_json(out / "crown_speed.json", {"benchmark": "crown_speed", "args": vars(args), "environment": environment(0),
                                          "rows": rows})  # fmt: skip
    lines = [
        "# Speed: CROWN vs IBP, MLP 784-256-256-256-10, batch 32, eps 0.01",
        "",
        f"Command: `python benchmarks/crown_speed.py --repeats {args.repeats} --out {args.out}` (medians)",
        "",
        "| dtype | ibp ms | crown ms | crown / ibp |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['dtype']} | {r['ibp_ms']:.2f} | {r['crown_ms']:.1f} | {r['ratio']:.0f}x |" for r in rows]
    write_text(out / "crown_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines[4:]))


if __name__ == "__main__":
    main()
