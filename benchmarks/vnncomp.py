"""Run VNN-COMP instances and compare with the expected answers.

    python benchmarks/vnncomp.py [FOLDER ...] [--timeout-factor 1.0] [--out docs/benchmarks]

Each FOLDER has an ``instances.csv`` (onnx, vnnlib, timeout_s, expected); default: every
benchmark under ../shared/benchmarks/vnncomp.  Prints solved / wrong / timeout-or-unknown counts
per benchmark and the total time; writes vnncomp.json and vnncomp.md.  A *wrong* answer is
``unsat`` on a ``sat`` instance or ``sat`` on an ``unsat`` one.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

from boundflow.verify import verify  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*")
    ap.add_argument("--timeout-factor", type=float, default=1.0)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--limit", type=int, default=None, help="at most this many instances per benchmark")
    args = ap.parse_args()
    folders = [Path(f) for f in args.folders] or sorted(p.parent for p in DEFAULT_ROOT.glob("*/instances.csv"))
    from tqdm import tqdm

    rows, summary = [], []
    for folder in folders:
        inst = list(csv.DictReader(open(folder / "instances.csv")))[: args.limit]
        t0 = time.monotonic()
        counts = {"solved": 0, "wrong": 0, "unsolved": 0}
        for r in tqdm(inst, desc=folder.name, unit="inst"):
            to = float(r["timeout_s"]) * args.timeout_factor
            res = verify(folder / r["onnx"], folder / r["vnnlib"], timeout=to)
            exp = r["expected"].strip()
            wrong = (res.status == "unsat" and exp == "sat") or (res.status == "sat" and exp == "unsat")
            solved = res.status == exp
            counts["wrong" if wrong else "solved" if solved else "unsolved"] += 1
            rows.append(
                {
                    "benchmark": folder.name,
                    "onnx": r["onnx"],
                    "vnnlib": r["vnnlib"],
                    "expected": exp,
                    "answer": res.status,
                    "seconds": res.seconds,
                    "timeout_s": to,
                    "boxes": res.boxes,
                }
            )
        summary.append({"benchmark": folder.name, "instances": len(inst), **counts, "seconds": time.monotonic() - t0})
    out = Path(args.out)
    write_json(
        out / "vnncomp.json",
        {"benchmark": "vnncomp", "args": vars(args), "environment": environment(), "summary": summary, "rows": rows},
    )
    cmd = "python benchmarks/vnncomp.py" + (
        f" --timeout-factor {args.timeout_factor}" if args.timeout_factor != 1 else ""
    )
    if args.limit:
        cmd += f" --limit {args.limit}"
    lines = [
        "# VNN-COMP instances",
        "",
        f"Command: `{cmd}`",
        "",
        "| benchmark | instances | solved | wrong | timeout/unknown | total s |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['benchmark']} | {s['instances']} | {s['solved']} | {s['wrong']} | {s['unsolved']} | "
            f"{s['seconds']:.1f} |"
        )
    lines += ["", "| benchmark | onnx | vnnlib | expected | answer | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['onnx']} | {r['vnnlib']} | {r['expected']} | {r['answer']} | {r['seconds']:.2f} |"
        )
    write_text(out / "vnncomp.md", "\n".join(lines) + "\n")
    print("\n".join(lines[4 : 6 + len(summary)]))


if __name__ == "__main__":
    main()
