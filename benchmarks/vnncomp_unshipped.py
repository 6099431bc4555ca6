"""Instance folders for VNN-COMP instances this repository does not ship (a check that the
verifier's settings are not tuned to ../shared).

    python benchmarks/vnncomp_unshipped.py --benchmarks VNNCOMP2021 --results VNNCOMP2021_RESULTS \
        --out results/unshipped [--acasxu 24] [--mnistfc 4]
    python benchmarks/vnncomp_unshipped.py --vnncomp2022 B22 --results2022 R22 \
        --vnncomp2023 B23 --results2023 R23 --out results/unshipped [--per 3]
    python benchmarks/vnncomp.py results/unshipped/acasxu --out OUT_A --results results/unshipped/runs
    python benchmarks/vnncomp.py results/unshipped/mnistfc --out OUT_M --results results/unshipped/runs
    python benchmarks/vnncomp.py results/unshipped/20xx/* --timeout-cap 60 --out OUT_X --results results/unshipped/runs
    python benchmarks/vnncomp_unshipped.py --report OUT_A/vnncomp.json OUT_M/vnncomp.json OUT_X/vnncomp.json \
        --out docs/benchmarks

2022/2023: ``B22``/``B23``, checkouts of github.com/ChristopherBrix/vnncomp2022_benchmarks and
vnncomp2023_benchmarks; ``R22``/``R23``, of vnncomp2022_results and vnncomp2023_results (every
participant's ``results.csv`` per benchmark).  For every benchmark of ../shared (and
``sri_resnet_b``), ``--per`` instances that are not shipped and on which every participant that
answered agrees, sampled evenly in the competition's order, go to ``OUT/20xx/<benchmark>`` with
an ``instances.csv`` and a ``results_vnncomp20xx.csv`` holding alpha-beta-CROWN's answer and time
that year (which ``benchmarks/vnncomp.py`` sets beside ours).  Instances whose network the
fetched repository lacks (files too large for the snapshot) are left out and counted.

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
            ans = _ANSWER.get(row[4].strip().lower())
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


# (shared folder, year, folder in that year's benchmark and results repositories)
RECENT = [
    ("oval21", 2022, "oval21"),
    ("sri_resnet_a", 2022, "sri_resnet_a"),
    ("sri_resnet_b", 2022, "sri_resnet_b"),
    ("cifar_biasfield", 2022, "cifar_biasfield"),
    ("collins_rul_cnn", 2022, "collins_rul_cnn"),
    ("carvana_unet", 2022, "carvana_unet_2022"),
    ("rl_benchmarks", 2022, "rl_benchmarks"),
    ("tllverifybench", 2023, "tllverifybench"),
    ("cgan", 2023, "cgan"),
    ("dist_shift", 2023, "dist_shift"),
    ("metaroom", 2023, "metaroom"),
    ("ml4acopf", 2023, "ml4acopf"),
    ("nn4sys", 2023, "nn4sys"),
    ("traffic_signs", 2023, "traffic_signs_recognition"),
    ("vit", 2023, "vit"),
    ("yolo", 2023, "yolo"),
    ("cctsdb_yolo", 2023, "cctsdb_yolo"),
]
_ANSWER = {"holds": "unsat", "unsat": "unsat", "violated": "sat", "sat": "sat"}


def _plain(name: str) -> str:
    return Path(name).name.removesuffix(".gz")


def _year_answers(results: Path, year: int, folder: str) -> dict[str, dict[tuple[str, str], tuple[str, float]]]:
    """Per tool: ``(onnx, vnnlib) file names -> (answer, seconds)`` for ``folder`` in that year's
    results repository (2023 names its folders ``2023_<benchmark>``)."""
    name = f"{year}_{folder}" if year == 2023 else folder
    out: dict[str, dict] = {}
    for csv_path in sorted(results.glob(f"*/{name}/results.csv")):
        got = {}
        for row in csv.reader(csv_path.open()):
            if len(row) >= 6 and row[4].strip().lower() in _ANSWER:
                try:
                    t = float(row[5])
                except ValueError:
                    continue
                got[(_plain(row[1]), _plain(row[2]))] = (_ANSWER[row[4].strip().lower()], t)
        out[csv_path.parts[-3]] = got
    return out


def build_recent(
    bench: Path, results: Path, out: Path, shared: str, year: int, folder: str, count: int
) -> tuple[int, int]:
    """``(instances written, instances left out for a missing network)`` for one benchmark."""
    src = bench / "benchmarks" / folder
    rows = [r for r in csv.reader((src / "instances.csv").open()) if r and r[0] != "onnx"]
    tools = _year_answers(results, year, folder)
    shipped = {(_plain(o), _plain(v)) for o, v in _shipped(shared)}
    pool, missing = [], 0
    for onnx, vnnlib, timeout, *_ in rows:
        key = (_plain(onnx), _plain(vnnlib))
        got = {a[key][0] for a in tools.values() if key in a}
        if key in shipped or len(got) != 1:  # shipped, unanswered, or the tools disagree
            continue
        paths = []
        for rel in (onnx.strip(), vnnlib.strip()):
            p = src / rel
            p = p if p.is_file() else Path(f"{p}.gz")
            paths.append(p if p.is_file() else None)
        if None in paths:
            missing += 1
            continue
        pool.append((*paths, timeout.strip(), got.pop(), key))
    step = max(1, len(pool) // max(count, 1))
    chosen = pool[::step][:count]
    dest = out / str(year) / shared
    dest.mkdir(parents=True, exist_ok=True)
    abc = tools.get("alpha_beta_crown", {})
    with (dest / "instances.csv").open("w") as f:
        f.write("onnx,vnnlib,timeout_s,expected\n")
        for o, v, t, e, _ in chosen:
            f.write(f"{o},{v},{t},{e}\n")
    with (dest / f"results_vnncomp{year}.csv").open("w") as f:
        f.write("onnx,vnnlib,alpha_beta_crown\n")
        for o, v, _, _, key in chosen:
            ans = abc.get(key)
            cell = "-" if ans is None else f"{ans[1]:.1f} ({'h' if ans[0] == 'unsat' else 'v'})"
            f.write(f"{o},{v},{cell}\n")
    return len(chosen), missing


def _source(folder: str) -> str:
    """The competition year of a run's folder (``OUT/2022/<benchmark>``); 2021 otherwise."""
    parent = Path(folder).parent.name
    return parent if parent.isdigit() else "2021"


def report(runs: list[Path], out: Path) -> None:
    """``out/vnncomp_unshipped.md`` from the runs' ``vnncomp.json`` (copied with their plots)."""
    folder = out / "vnncomp_unshipped"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "# VNN-COMP instances this repository does not ship",
        "",
        "The verifier's settings, unchanged from the shared-instance runs, on instances sampled evenly from the "
        "VNN-COMP 2021, 2022 and 2023 benchmarks (every k-th in the competition's order, the shipped ones left out), "
        "so that nothing is tuned to the shipped instances. Expected answers: for 2021 nnenum's (ACAS Xu) and "
        "nnenum's and alpha-beta-CROWN's where they agree (mnist_fc); for 2022/2023 the answer every participant that "
        "answered agrees on. 2021: competition timeouts; 2022/2023: competition timeouts capped at 60 s. 2 cores, "
        "serial, each instance in its own `boundflow verify` process. alpha-beta-CROWN's column: its answers in that "
        "year's competition (GPU, uncapped timeouts). Commands: `benchmarks/vnncomp_unshipped.py` (checkouts of "
        "stanleybak/vnncomp2021(_results) and ChristopherBrix/vnncomp2022/2023_benchmarks(_results)).",
        "",
        "| benchmark | from | instances | solved | wrong | timeout/unknown | median s | slowest solved s | "
        "alpha-beta-CROWN solved (median s) | measured at |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    per, images, totals = [], [], {"instances": 0, "solved": 0, "wrong": 0, "abcrown": 0}
    for path in runs:
        d = json.loads(path.read_text())
        years = {Path(f).name: _source(f) for f in d["args"].get("folders", [])}
        stem = path.stem if len(d["summary"]) > 1 else d["summary"][0]["benchmark"]
        for src, dst in ((path, f"{stem}.json"), (path.with_suffix(".png"), f"{stem}.png")):
            if src.exists() and src.resolve() != (folder / dst).resolve():  # (a page rebuilt from its own copies)
                shutil.copyfile(src, folder / dst)
        if (folder / f"{stem}.png").exists():
            images.append(f"![{stem}](vnncomp_unshipped/{stem}.png)")
        commit = d["environment"].get("commit", "-")
        for s in d["summary"]:
            name = s["benchmark"]
            rows = [r for r in d["rows"] if r.get("benchmark", name) == name]
            t = [float(r["run_time"]) for r in rows]
            solved = [float(r["run_time"]) for r in rows if r["result"] == r["expected"]]
            slowest = f"{max(solved):.1f}" if solved else "–"
            abc = "-"
            if s.get("abcrown_solved") is not None:
                med = s.get("abcrown_median_s")
                abc = f"{s['abcrown_solved']} ({'-' if med is None else f'{med:.1f}'})"
                totals["abcrown"] += s["abcrown_solved"]
            for k in ("instances", "solved", "wrong"):
                totals[k] += s[k]
            lines.append(
                f"| {name} | {years.get(name, '2021')} | {s['instances']} | {s['solved']} | {s['wrong']} | "
                f"{s['unsolved']} | {statistics.median(t):.2f} | {slowest} | {abc} | {commit} |"
            )
            for r in rows:
                per.append(
                    f"| {name} | {Path(r['onnx']).name} | {Path(r['vnnlib']).name} | {r['expected']} | {r['result']} | "
                    f"{float(r['run_time']):.2f} | {r['timeout']} | {r.get('domains') or '-'} |"
                )
    lines += [
        "",
        f"In all: {totals['solved']} of {totals['instances']} solved, {totals['wrong']} wrong; alpha-beta-CROWN "
        f"solved {totals['abcrown']} of the 2022/2023 ones it is listed for.",
        "",
        "| benchmark | network | property | expected | answer | s | timeout | sub-domains |",
        "|---|---|---|---|---|---|---|---|",
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
    ap.add_argument("--vnncomp2022", type=Path, help="checkout of ChristopherBrix/vnncomp2022_benchmarks")
    ap.add_argument("--results2022", type=Path, help="checkout of ChristopherBrix/vnncomp2022_results")
    ap.add_argument("--vnncomp2023", type=Path, help="checkout of ChristopherBrix/vnncomp2023_benchmarks")
    ap.add_argument("--results2023", type=Path, help="checkout of ChristopherBrix/vnncomp2023_results")
    ap.add_argument("--per", type=int, default=3, help="2022/2023: instances to take per benchmark")
    args = ap.parse_args()
    if args.report:
        return report(args.report, args.out)
    recent = {2022: (args.vnncomp2022, args.results2022), 2023: (args.vnncomp2023, args.results2023)}
    if any(b or r for b, r in recent.values()):
        for year, (b, r) in recent.items():
            if (b is None) != (r is None):
                raise SystemExit(f"error: --vnncomp{year} and --results{year} go together")
            for path in (b / "benchmarks", r) if b is not None else ():
                if not path.is_dir():
                    raise SystemExit(f"error: {path} is not a folder (see --help for the checkouts needed)")
        for shared, year, folder in RECENT:
            b, r = recent[year]
            if b is None:
                continue
            n, missing = build_recent(b, r, args.out, shared, year, folder, args.per)
            lost = f" ({missing} agreed instances left out: network not in the checkout)" if missing else ""
            print(f"{shared}: {n} instances from {year} -> {args.out}/{year}/{shared}{lost}")
        return None
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
