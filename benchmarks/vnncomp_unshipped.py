"""Instance folders for VNN-COMP instances this repository does not ship (a check that the
verifier's settings are not tuned to ../shared).

    python benchmarks/vnncomp_unshipped.py --benchmarks VNNCOMP2021 --results VNNCOMP2021_RESULTS \
        --out results/unshipped [--acasxu 24] [--mnistfc 4]
    python benchmarks/vnncomp.py results/unshipped/acasxu results/unshipped/mnistfc \
        --out docs/benchmarks/unshipped --results results/unshipped/runs

``VNNCOMP2021``: a checkout of github.com/stanleybak/vnncomp2021 (the ONNX networks and
properties); ``VNNCOMP2021_RESULTS``: of github.com/stanleybak/vnncomp2021_results (the
expected answers: nnenum's for ACAS Xu, where it decided all 186; for mnist_fc the answer of
nnenum and alpha-beta-CROWN where they agree).  Instances in ../shared are left out; the rest
are sampled evenly (every k-th in the competition's order), so the choice does not depend on
how hard an instance is.  Writes one folder per benchmark with an ``instances.csv``
(``onnx,vnnlib,timeout,expected``, absolute paths).
"""

from __future__ import annotations

import argparse
import csv
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", required=True, type=Path, help="checkout of stanleybak/vnncomp2021")
    ap.add_argument("--results", required=True, type=Path, help="checkout of stanleybak/vnncomp2021_results")
    ap.add_argument("--out", default="results/unshipped", type=Path)
    ap.add_argument("--acasxu", type=int, default=24, help="ACAS Xu instances to take")
    ap.add_argument("--mnistfc", type=int, default=4, help="mnist_fc instances to take")
    args = ap.parse_args()
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
