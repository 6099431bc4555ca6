"""alpha-beta-CROWN and BoundFlow on the same VNN-COMP instances, on this machine's CPUs, with
the same timeout: answers, seconds and sub-domains bounded per second (the profile the
competition's GPU numbers cannot give).

    python benchmarks/abcrown_side_by_side.py --abcrown ABCROWN/complete_verifier \\
        [--pythonpath AUTO_LIRPA:DEPS] [--timeout 60] [--out docs/benchmarks] \\
        BENCHMARK:CONFIG:ROW [BENCHMARK:CONFIG:ROW ...]

``BENCHMARK``: a folder of ../shared/benchmarks/vnncomp (or any folder with an
``instances.csv``); ``ROW``: the instance's row there (0-based); ``CONFIG``: alpha-beta-CROWN's
configuration file for it, relative to its ``exp_configs`` (e.g. ``vnncomp22/oval22.yaml``).
alpha-beta-CROWN is not a dependency: ``--abcrown`` is a checkout's ``complete_verifier`` folder
(github.com/Verified-Intelligence/alpha-beta-CROWN); ``--pythonpath`` what its imports need
(auto_LiRPA, onnx2pytorch, sortedcontainers, ...).  Each tool runs in its own process, timed
from launch, on the CPU (``--device cpu``), one instance at a time.  alpha-beta-CROWN's
configuration is used as shipped except what needs licensed solvers: cutting planes (IBM CPLEX)
off, and MIP refinement (``bab-refine``, Gurobi) replaced by plain ``bab`` — both are in its
competition runs, so its numbers here are its search's, not its whole portfolio's.
Sub-domains: alpha-beta-CROWN's last ``N domains visited``; BoundFlow's boxes from ``boundflow
verify``'s summary line.  Writes ``abcrown_side_by_side.{json,md,png}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

from boundflow.verify.vnncomp import _BOXES  # noqa: E402  (boundflow verify's summary line)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp"
# alpha-beta-CROWN's configuration as shipped, less what needs licensed solvers or a CSV sweep
_DERIVE = """
import sys, yaml
c = yaml.safe_load(open(sys.argv[1])) or {}
g = c.setdefault("general", {})
for k in ("root_path", "csv_name"):
    g.pop(k, None)
if g.get("complete_verifier") in ("bab-refine", "mip"):
    g["complete_verifier"] = "bab"  # MIP refinement needs Gurobi
cut = c.setdefault("bab", {}).setdefault("cut", {})
cut.update(enabled=False, cplex_cuts=False, bab_cut=False)  # cutting planes need IBM CPLEX
yaml.safe_dump(c, open(sys.argv[2], "w"))
"""
_VISITED = re.compile(r"(\d+) domains visited")


def _plain(path: Path, tmp: Path) -> Path:
    """alpha-beta-CROWN reads plain files: a ``.gz`` is unpacked into ``tmp``."""
    if path.suffix != ".gz":
        return path
    out = tmp / path.name.removesuffix(".gz")
    with gzip.open(path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _instance(folder: Path, row: int) -> tuple[Path, Path, float, str]:
    rows = [r for r in csv.reader((folder / "instances.csv").open()) if r and r[0] != "onnx"]
    if not 0 <= row < len(rows):
        raise SystemExit(f"error: {folder}/instances.csv has {len(rows)} rows, no row {row}")
    r = rows[row]
    return folder / r[0], folder / r[1], float(r[2]), (r[3].strip() if len(r) > 3 else "")


def run_abcrown(root: Path, config: str, onnx: Path, vnnlib: Path, timeout: float, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res = tmp / "result.txt"
        derived = tmp / "config.yaml"
        subprocess.run(
            [sys.executable, "-c", _DERIVE, str(root / "exp_configs" / config), str(derived)], env=env, check=True
        )
        cmd = [sys.executable, "abcrown.py", "--config", str(derived)]
        cmd += ["--onnx_path", str(_plain(onnx, tmp)), "--vnnlib_path", str(_plain(vnnlib, tmp))]
        cmd += ["--device", "cpu", "--timeout", f"{timeout:g}", "--results_file", str(res)]
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout + 60)
            out, err = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            out, err = (e.stdout or b"").decode(errors="replace"), "killed 60 s after the timeout"
        wall = time.monotonic() - start
        answer = res.read_text().split("\n", 1)[0].strip() if res.exists() else "error"
    answer = {"safe": "unsat", "unsafe": "sat", "holds": "unsat", "violated": "sat"}.get(answer, answer)
    visited = [int(m) for m in _VISITED.findall(out)]
    why = "" if answer != "error" else (err.strip().splitlines() or ["no result file"])[-1][:200]
    return {"answer": answer, "seconds": wall, "domains": max(visited) if visited else 0, "error": why}


def run_boundflow(onnx: Path, vnnlib: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.txt"
        cmd = [sys.executable, "-m", "boundflow", "verify", str(onnx), str(vnnlib), "--timeout", f"{timeout:g}"]
        cmd += ["--out", str(res), "--no-progress"]
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        wall = time.monotonic() - start
        answer = res.read_text().split("\n", 1)[0].strip() if res.exists() else "error"
    found = _BOXES.search(proc.stdout)
    why = "" if answer != "error" else (proc.stderr.strip().splitlines() or ["no result file"])[-1][:200]
    return {"answer": answer, "seconds": wall, "domains": int(found.group(1)) if found else 0, "error": why}


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['benchmark']}#{r['row']}" for r in rows]
    rate = {t: [r[t]["domains"] / max(r[t]["seconds"], 1e-9) for r in rows] for t in ("abcrown", "boundflow")}
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], rate["abcrown"], 0.4, label="alpha-beta-CROWN (CPU)")
    ax.bar([x + 0.2 for x in xs], rate["boundflow"], 0.4, label="BoundFlow")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right")
    ax.set_ylabel("sub-domains per second")
    ax.set_yscale("symlog")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("instances", nargs="+", help="BENCHMARK:CONFIG:ROW")
    ap.add_argument("--abcrown", type=Path, required=True, help="alpha-beta-CROWN's complete_verifier folder")
    ap.add_argument("--pythonpath", default="", help="extra import paths for alpha-beta-CROWN (':'-separated)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = ap.parse_args()
    if not (args.abcrown / "abcrown.py").is_file():
        raise SystemExit(f"error: {args.abcrown} has no abcrown.py (give alpha-beta-CROWN's complete_verifier folder)")
    jobs = []
    for spec in args.instances:
        parts = spec.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise SystemExit(f"error: instance {spec!r} is not BENCHMARK:CONFIG:ROW")
        folder = Path(parts[0]) if Path(parts[0]).is_dir() else SHARED / parts[0]
        if not (folder / "instances.csv").is_file():
            raise SystemExit(f"error: instance {spec!r}: no {folder}/instances.csv")
        if not (args.abcrown / "exp_configs" / parts[1]).is_file():
            raise SystemExit(f"error: instance {spec!r}: no configuration exp_configs/{parts[1]}")
        jobs.append((folder, parts[1], int(parts[2])))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (args.pythonpath, env.get("PYTHONPATH", "")) if p)
    rows = []
    for folder, config, row in jobs:
        onnx, vnnlib, t_comp, expected = _instance(folder, row)
        timeout = min(t_comp, args.timeout)
        a = run_abcrown(args.abcrown, config, onnx, vnnlib, timeout, env)
        b = run_boundflow(onnx, vnnlib, timeout)
        rows.append(
            {
                "benchmark": folder.name,
                "row": row,
                "onnx": onnx.name,
                "vnnlib": vnnlib.name,
                "timeout": timeout,
                "expected": expected,
                "abcrown": a,
                "boundflow": b,
            }
        )
        print(
            f"{folder.name}#{row}: alpha-beta-CROWN {a['answer']} {a['seconds']:.1f} s {a['domains']} domains"
            f" {a['error']} | BoundFlow {b['answer']} {b['seconds']:.1f} s {b['domains']} domains",
            flush=True,
        )
    lines = [
        "# alpha-beta-CROWN and BoundFlow on the same CPUs",
        "",
        f"Command: `python benchmarks/abcrown_side_by_side.py --abcrown ABCROWN/complete_verifier --timeout "
        f"{args.timeout:g} {' '.join(args.instances)}`. Each tool in its own process, timed from launch, on "
        "the CPU; alpha-beta-CROWN's configuration as shipped without cutting planes (CPLEX) and MIP "
        "refinement (Gurobi).",
        "",
        "| instance | expected | timeout s | alpha-beta-CROWN | s | sub-domains | per s | BoundFlow | s | "
        "sub-domains | per s | rate ratio (BoundFlow / alpha-beta-CROWN) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["abcrown"], r["boundflow"]
        ra, rb = a["domains"] / max(a["seconds"], 1e-9), b["domains"] / max(b["seconds"], 1e-9)
        ratio = f"{rb / ra:.2f}" if ra > 0 else "-"
        lines.append(
            f"| {r['benchmark']} {r['onnx']} {r['vnnlib']} | {r['expected']} | {r['timeout']:g} | {a['answer']} | "
            f"{a['seconds']:.1f} | {a['domains']} | {ra:.1f} | {b['answer']} | {b['seconds']:.1f} | {b['domains']} | "
            f"{rb:.1f} | {ratio} |"
        )
    lines += ["", "![sub-domains per second](abcrown_side_by_side.png)", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "abcrown_side_by_side.json",
        {
            "benchmark": "abcrown_side_by_side",
            "args": {k: str(v) for k, v in vars(args).items()},
            "environment": environment(),
            "rows": rows,
        },
    )
    write_text(args.out / "abcrown_side_by_side.md", "\n".join(lines))
    _plot(rows, args.out / "abcrown_side_by_side.png")


if __name__ == "__main__":
    main()
