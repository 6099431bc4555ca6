"""Instance folders for VNN-COMP instances this repository does not ship (a check that the
verifier's settings are not tuned to ../shared).

    python benchmarks/vnncomp_unshipped.py --benchmarks VNNCOMP2021 --results VNNCOMP2021_RESULTS \
        --out results/unshipped [--acasxu 24] [--mnistfc 4]
    python benchmarks/vnncomp.py results/unshipped/acasxu --out OUT_A --results results/unshipped/runs
    python benchmarks/vnncomp.py results/unshipped/mnistfc --out OUT_M --results results/unshipped/runs
    python benchmarks/vnncomp_unshipped.py --report OUT_A/vnncomp.json OUT_M/vnncomp.json \
        --out docs/benchmarks

``VNNCOMP2021``: a checkout of github.com/stanleybak/vnncomp2021 (the ONNX networks and
properties); ``VNNCOMP2021_RESULTS``: of github.com/stanleybak/vnncomp2021_results (the
expected answers: nnenum's for ACAS Xu, where it decided all 186; for mnist_fc the answer of
nnenum and alpha-beta-CROWN where they agree).  Instances in ../shared are left out; the rest
are sampled evenly (every k-th in the competition's order), so the choice does not depend on
how hard an instance is.  Writes one folder per benchmark with an ``instances.csv``
(``onnx,vnnlib,timeout,expected``, absolute paths).  ``--report``: the page
``vnncomp_unshipped.md`` (with the runs' JSON and plots under ``vnncomp_unshipped/``) from the
``vnncomp.json`` of each benchmark's run.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp"


def _answers(results: Path, tool: str, benchmark: str) -> dict[tuple[str, str], str]:
    out = {}
    for row in csv.reader((results / "results_csv" / f"{tool}.csv").open()):
        if len(row) >= 5 and row[0] == benchmark:
            ans = {"holds": "unsat", "unsat": "unsat", "violated": "sat", "sat": "sat"}.get(row[4].strip().lower())
            if ans:
                out[(Path(row[1]).name, Path(row[2]).name)] = ans
    return out


def _shipped(name: str) -> set[tuple[str, str]]:
    path = SHARED / name / "instances.csv"
    if not path.exists():
        return set()
    rows = [r for r in csv.reader(path.open()) if r and r[0] != "onnx"]
    return {(Path(r[0]).name, Path(r[1]).name) for r in rows}


def build(bench: Path, results: Path, out: Path, name: str, src: str, shared: str, count: int, tools: list[str]) -> int:
    rows = [r for r in csv.reader((bench / "benchmarks" / src / f"{src}_instances.csv").open()) if r]
    answers = [_answers(results, t, src) for t in tools]
    shipped = _shipped(shared)
    pool = []
    for onnx, vnnlib, timeout in rows:
        key = (Path(onnx).name, Path(vnnlib).name)
        got = {a[key] for a in answers if key in a}
        if key in shipped or len(got) != 1:  # shipped, or no agreed answer
            continue
        pool.append((bench / "benchmarks" / src / onnx, bench / "benchmarks" / src / vnnlib, timeout, got.pop()))
    step = max(1, len(pool) // max(count, 1))
    chosen = pool[::step][:count]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "instances.csv").open("w") as f:
        f.write("onnx,vnnlib,timeout_s,expected\n")
        for o, v, t, e in chosen:
            f.write(f"{o},{v},{t},{e}\n")
    return len(chosen)


def report(runs: list[Path], out: Path) -> None:
    """``out/vnncomp_unshipped.md`` from the runs' ``vnncomp.json`` (copied with their plots)."""
    folder = out / "vnncomp_unshipped"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# VNN-COMP instances this repository does not ship",
        "",
        "The verifier's settings, unchanged from the shared-instance runs, on instances sampled evenly from the "
        "VNN-COMP 2021 benchmarks (every k-th in the competition's order, the shipped ones left out); expected "
        "answers from the competition's results (nnenum for ACAS Xu; nnenum and alpha-beta-CROWN where they agree "
        "for mnist_fc). Competition timeouts, 2 cores, serial. Commands: see `benchmarks/vnncomp_unshipped.py` "
        "(checkouts of github.com/stanleybak/vnncomp2021 and stanleybak/vnncomp2021_results).",
        "",
        "| benchmark | instances | solved | wrong | timeout/unknown | median s | slowest solved s |",
        "|---|---|---|---|---|---|---|",
    ]
    per, images = [], []
    for path in runs:
        d = json.loads(path.read_text())
        s = d["summary"][0]
        name = s["benchmark"]
        shutil.copyfile(path, folder / f"{name}.json")
        if (path.parent / "vnncomp.png").exists():
            shutil.copyfile(path.parent / "vnncomp.png", folder / f"{name}.png")
            images.append(f"![{name}](vnncomp_unshipped/{name}.png)")
        t = [float(r["run_time"]) for r in d["rows"]]
        solved = [float(r["run_time"]) for r in d["rows"] if r["result"] == r["expected"]]
        slowest = f"{max(solved):.1f}" if solved else "–"
        lines.append(
            f"| {name} | {s['instances']} | {s['solved']} | {s['wrong']} | {s['unsolved']} | "
            f"{statistics.median(t):.2f} | {slowest} |"
        )
        for r in d["rows"]:
            per.append(
                f"| {name} | {Path(r['onnx']).name} | {Path(r['vnnlib']).name} | {r['expected']} | {r['result']} | "
                f"{float(r['run_time']):.2f} | {r['timeout']} |"
            )
    lines += [
        "",
        "| benchmark | network | property | expected | answer | s | timeout |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += per + ["", " ".join(images), ""]
    (out / "vnncomp_unshipped.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", type=Path, help="checkout of stanleybak/vnncomp2021")
    ap.add_argument("--results", type=Path, help="checkout of stanleybak/vnncomp2021_results")
    ap.add_argument("--report", nargs="+", type=Path, help="vnncomp.json of each run: write the docs page")
    ap.add_argument("--out", default="results/unshipped", type=Path)
    ap.add_argument("--acasxu", type=int, default=24, help="ACAS Xu instances to take")
    ap.add_argument("--mnistfc", type=int, default=4, help="mnist_fc instances to take")
    args = ap.parse_args()
    if args.report:
        return report(args.report, args.out)
    if args.benchmarks is None or args.results is None:
        raise SystemExit("error: --benchmarks and --results are needed (or --report)")
    for path in (args.benchmarks / "benchmarks", args.results / "results_csv"):
        if not path.is_dir():
            raise SystemExit(f"error: {path} is not a folder (see --help for the checkouts needed)")
    n = build(args.benchmarks, args.results, args.out, "acasxu", "acasxu", "acasxu", args.acasxu, ["nnenum"])
    m = build(
        args.benchmarks, args.results, args.out, "mnistfc", "mnistfc", "mnist_fc", args.mnistfc, ["nnenum", "a-b-CROWN"]
    )
    print(f"{n} ACAS Xu and {m} mnist_fc instances -> {args.out}/acasxu, {args.out}/mnistfc")


if __name__ == "__main__":
    main()
