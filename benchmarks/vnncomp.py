"""Run VNN-COMP instances as the competition does and compare with the expected answers.

    python benchmarks/vnncomp.py [FOLDER ...] [--timeout-factor 1.0] [--timeout-cap S]
                                 [--out docs/benchmarks] [--name vnncomp] [--results results/vnncomp]
                                 [--limit N] [--in-process]

Each FOLDER has an ``instances.csv`` (onnx, vnnlib, timeout_s, expected); default: every
benchmark under ../shared/benchmarks/vnncomp.  Every folder runs through
:func:`boundflow.verify.vnncomp.run_benchmark` (competition timeouts, at most ``--timeout-cap``
seconds each; an answer after the timeout counts as a timeout; one result file per instance,
resumable under ``--results``), each instance in its own ``boundflow verify`` process timed
from its launch, as the competition runs it (``--in-process``: in this process).  Prints per
benchmark solved / wrong / timeout-or-unknown, answers later than the timeout + 2 s, median and
slowest seconds of the answers, and alpha-beta-CROWN's solved count and median time from the
folder's ``results_vnncomp*.csv``; writes NAME.json, NAME.md and NAME.png to ``--out``
(``--name``, default vnncomp).  A *wrong* answer is ``unsat`` on a ``sat`` instance or ``sat`` on an ``unsat`` one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

from boundflow.verify.vnncomp import read_instances, run_benchmark  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp"


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {"sat": "tab:red", "unsat": "tab:green", "timeout": "tab:grey", "unknown": "tab:orange"}
    for status, c in colours.items():
        pts = [(float(r["timeout"]), float(r["run_time"])) for r in rows if r["result"] == status]
        if pts:
            ax.scatter(*zip(*pts), s=12, c=c, label=status, alpha=0.7)
    top = max(float(r["timeout"]) for r in rows)
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="timeout")
    ax.set_xlabel("instance timeout (s)")
    ax.set_ylabel("wall time (s)")
    ax.set_title("VNN-COMP shared instances: wall time per answer")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _reference(folder: Path) -> dict:
    """alpha-beta-CROWN's solve time per (onnx, vnnlib) file name in the folder's
    ``results_vnncomp*.csv`` (``None`` where it did not solve the instance); empty without them."""
    import csv

    out: dict = {}
    for f in sorted(folder.glob("results_vnncomp*.csv")):
        with open(f) as fh:
            for row in csv.DictReader(fh):
                cell = (row.get("alpha_beta_crown") or "").strip()
                key = (row["onnx"].split("/")[-1], row["vnnlib"].split("/")[-1])
                t = None
                if cell.endswith("(h)") or cell.endswith("(v)"):
                    try:
                        t = float(cell.split()[0])
                    except ValueError:
                        t = None
                out[key] = t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*")
    ap.add_argument("--timeout-factor", type=float, default=1.0)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument("--results", default="results/vnncomp", help="per-instance results (resumable)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many instances per benchmark")
    ap.add_argument("--workers", type=int, default=1, help="parallel branch and bound over this many processes")
    ap.add_argument("--executor", default="process", choices=["process", "ray"])
    ap.add_argument("--parallel", default="subdomains", choices=["subdomains", "instances"])
    ap.add_argument("--timeout-cap", type=float, default=None, help="no instance gets more seconds than this")
    ap.add_argument("--name", default="vnncomp", help="stem of the files written to --out")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="verify in this process (default: one `boundflow verify` process per instance, as the competition runs)",
    )
    args = ap.parse_args()
    executor = None
    if args.workers > 1:
        from solvers.executor import make_executor

        executor = make_executor(args.executor, args.workers)
    folders = [Path(f) for f in args.folders] or sorted(p.parent for p in DEFAULT_ROOT.glob("*/instances.csv"))
    rows, summary = [], []
    for folder in folders:
        csv_path = folder / "instances.csv"
        if args.limit:
            lines = csv_path.read_text().splitlines()
            csv_path = Path(args.results) / f"{folder.name}_limited.csv"
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            keep = [ln for ln in lines if not ln.startswith("onnx,")][: args.limit]
            # paths stay relative to the original folder
            csv_path.write_text(
                "\n".join(
                    ",".join([str(folder / c) if i < 2 else c for i, c in enumerate(ln.split(","))]) for ln in keep
                )
                + "\n"
            )
        expected = {(i.onnx_text, i.vnnlib_text): i.expected for i in read_instances(csv_path)}
        got = run_benchmark(
            csv_path,
            Path(args.results) / folder.name,
            benchmark=folder.name,
            timeout_factor=args.timeout_factor,
            executor=executor,
            parallel=args.parallel,
            isolate=not args.in_process,
            timeout_cap=args.timeout_cap,
        )
        counts = {"solved": 0, "wrong": 0, "unsolved": 0, "late": 0}
        abc = _reference(folder)
        for r in got:
            exp = (expected.get((r["onnx"], r["vnnlib"])) or r.get("expected") or "").strip()
            ans = r["result"]
            wrong = (ans == "unsat" and exp == "sat") or (ans == "sat" and exp == "unsat")
            counts["wrong" if wrong else "solved" if ans == exp else "unsolved"] += 1
            counts["late"] += float(r["run_time"]) > float(r["timeout"]) + 2.0
            rows.append({**r, "expected": exp, "overrun": float(r["run_time"]) - float(r["timeout"])})
        times = sorted(float(r["run_time"]) for r in got if r["result"] in ("sat", "unsat"))
        ref = [abc.get((r["onnx"].split("/")[-1], r["vnnlib"].split("/")[-1])) for r in got]
        ref_times = sorted(t for t in ref if t is not None)
        summary.append(
            {
                "benchmark": folder.name,
                "instances": len(got),
                **counts,
                "median_s": times[len(times) // 2] if times else None,
                "slowest_s": times[-1] if times else None,
                "abcrown_solved": len(ref_times) if any(abc.values()) or abc else None,
                "abcrown_median_s": ref_times[len(ref_times) // 2] if ref_times else None,
                "seconds": sum(float(r["run_time"]) for r in got),  # (also right for a resumed run)
            }
        )
    if executor is not None:
        executor.close()
    over = sorted(r["overrun"] for r in rows)

    def q(p):
        return over[min(len(over) - 1, int(p * (len(over) - 1)))] if over else 0.0

    overrun = {"max": q(1.0), "p99": q(0.99), "p90": q(0.9), "median": q(0.5), "over_timeout": sum(o > 0 for o in over)}
    out = Path(args.out)
    write_json(
        out / f"{args.name}.json",
        {
            "benchmark": "vnncomp",
            "args": vars(args),
            "environment": environment(),
            "summary": summary,
            "overrun_s": overrun,
            "rows": rows,
        },
    )
    _plot(rows, out / f"{args.name}.png")
    cmd = "python benchmarks/vnncomp.py" + (
        f" --timeout-factor {args.timeout_factor}" if args.timeout_factor != 1 else ""
    )
    if args.limit:
        cmd += f" --limit {args.limit}"
    if args.timeout_cap:
        cmd += f" --timeout-cap {args.timeout_cap:g}"
    if args.in_process:
        cmd += " --in-process"
    if args.name != "vnncomp":
        cmd += f" --name {args.name}"
    if args.workers > 1:
        cmd += f" --workers {args.workers} --executor {args.executor} --parallel {args.parallel}"
    lines = [
        "# VNN-COMP instances",
        "",
        f"Command: `{cmd}` (each folder through `boundflow vnncomp`; an answer after the timeout counts as a timeout)",
        "",
        "| benchmark | instances | solved | wrong | timeout/unknown | later than timeout + 2 s | median s | "
        "slowest s | alpha-beta-CROWN solved (median s) | total s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v):
        return "-" if v is None else f"{v:.1f}"

    for s in summary:
        ref = "-" if s["abcrown_solved"] is None else f"{s['abcrown_solved']} ({fmt(s['abcrown_median_s'])})"
        lines.append(
            f"| {s['benchmark']} | {s['instances']} | {s['solved']} | {s['wrong']} | {s['unsolved']} | {s['late']} | "
            f"{fmt(s['median_s'])} | {fmt(s['slowest_s'])} | {ref} | {s['seconds']:.1f} |"
        )
    lines += [
        "",
        f"Wall time minus the instance's timeout (s): median {overrun['median']:.2f}, 90th percentile "
        f"{overrun['p90']:.2f}, 99th {overrun['p99']:.2f}, max {overrun['max']:.2f}; "
        f"{overrun['over_timeout']} of {len(over)} instances ran past their timeout.",
        "",
        f"![wall time per answer]({args.name}.png)",
        "",
        "| benchmark | onnx | vnnlib | expected | answer | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['onnx']} | {r['vnnlib']} | {r['expected']} | {r['result']} | "
            f"{float(r['run_time']):.2f} |"
        )
    write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines[4 : 8 + len(summary)]))


if __name__ == "__main__":
    main()
