"""Which VNN-COMP networks BoundFlow imports and bounds: one row per distinct network.

    python benchmarks/vnncomp_coverage.py [FOLDER ...] [--checkout DIR ...] [--bound-timeout 60]
                                          [--methods crown] [--out docs/benchmarks]

FOLDER: benchmark folders with an ``instances.csv`` (default: every folder under
../shared/benchmarks/vnncomp); ``--checkout``: a fetched ``vnncomp2022_benchmarks`` or
``vnncomp2023_benchmarks`` checkout (its ``benchmarks/*/instances.csv``, paths relative to each
benchmark folder, ``.gz`` files as shipped).  For every distinct network (with the first
property that names it), in its own process (so its peak memory is its own):

* **import**: ``load_onnx`` and the time it takes;
* **ort diff**: the largest difference to onnxruntime on random inputs, relative to
  ``1 + max |output|`` (the import is accepted at 1e-4);
* **bound**: each method's bounds of the outputs on the property's first input box (for a
  network with index inputs, case by case: :mod:`boundflow.verify.cases`), within
  ``--bound-timeout`` seconds (``boundflow.deadline``), and whether they contain the outputs at
  256 sampled points, the box's centre and 8 attacked points (signed-gradient steps towards each
  output's extremes); ``timeout`` or the error otherwise;
* **seconds** and **peak memory** (the process's maximum resident set).

Writes ``vnncomp_coverage.{md,json,png}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "vnncomp"


def _networks(folder: Path) -> list[tuple[str, Path, Path]]:
    """``(benchmark, onnx, first vnnlib naming it)`` per distinct network of ``folder``."""
    seen: dict[str, tuple[str, Path, Path]] = {}
    with open(folder / "instances.csv") as fh:
        for row in csv.reader(fh):
            if not row or row[0].strip() == "onnx" or len(row) < 2:
                continue
            onnx, vnnlib = row[0].strip(), row[1].strip()
            if onnx not in seen:
                seen[onnx] = (folder.name, folder / onnx, folder / vnnlib)
    return list(seen.values())


def _one(onnx: str, vnnlib: str, methods: list[str], bound_timeout: float) -> dict:
    """The row of one network (runs in the child process)."""
    import gzip

    import numpy as np
    import torch

    import boundflow as bf
    from boundflow import deadline
    from boundflow.errors import UnsupportedOperation
    from boundflow.onnx import load_onnx, parse_vnnlib
    from boundflow.onnx.importer import check_against_onnxruntime
    from boundflow.verify.cases import case_bounds, cases
    from boundflow.verify.pipeline import _batched, _n_outputs

    torch.set_num_threads(2)
    row: dict = {}
    t0 = time.monotonic()
    try:
        module = load_onnx(onnx)
    except Exception as e:  # noqa: BLE001 - every failure is a table entry
        row["import"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return row
    row["import"] = "ok"
    row["import_s"] = time.monotonic() - t0
    data = Path(onnx).read_bytes()
    data = gzip.decompress(data) if onnx.endswith(".gz") else data
    try:
        row["ort_diff"] = check_against_onnxruntime(module, data, n=5, atol=float("inf"))
    except Exception as e:  # noqa: BLE001
        row["ort_diff"] = f"{type(e).__name__}: {str(e)[:120]}"
    module = module.double().eval()
    try:
        dj = parse_vnnlib(vnnlib, n_inputs=int(np.prod(module.input_shape)), n_outputs=_n_outputs(module))[0]
    except Exception as e:  # noqa: BLE001
        row["bound"] = {m: f"property: {type(e).__name__}: {str(e)[:120]}" for m in methods}
        return row
    f = _batched(module)
    row["batch_first"] = "yes" if f.batchable else ("vmap" if f.vmapped else "no")
    linear = f.batchable or f.vmapped  # a vmapped graph batch-first by vmap's batching rules
    lo, hi = dj.lower[None], dj.upper[None]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pts = torch.cat([(lo + hi) / 2, lo + (hi - lo) * torch.rand(256, lo.shape[1], generator=g, dtype=lo.dtype)])
        ys = [f(pts[i : i + 64]) for i in range(0, len(pts), 64)]
    # attacked points: signed-gradient steps towards the extremes of random output directions
    z = (lo + (hi - lo) * torch.rand(8, lo.shape[1], generator=g, dtype=lo.dtype)).requires_grad_(True)
    n_out = ys[0].shape[1]
    direction = torch.randn(8, n_out, generator=g, dtype=lo.dtype)
    try:
        for _ in range(10):
            obj = (f(z) * direction).sum()
            (grad,) = torch.autograd.grad(obj, z)
            z = torch.minimum(torch.maximum(z + (hi - lo) / 10 * grad.sign(), lo), hi).detach().requires_grad_(True)
        with torch.no_grad():
            ys.append(f(z))
    except Exception:  # noqa: BLE001 - a model without gradients is sampled only
        pass
    y = torch.cat(ys)
    row["bound"], row["bound_s"], row["width"] = {}, {}, {}
    for m in methods:
        t = time.monotonic()
        try:
            with deadline.within(time.monotonic() + bound_timeout):
                try:
                    if module.index_inputs:  # inputs read as indices: bounded case by case
                        lb, ub = case_bounds(module, lo, hi, method=m)
                        n_cases = len(list(cases(module, lo[0], hi[0])))
                        row["batch_first"] = f"{row['batch_first']}; {n_cases} index cases"
                    else:
                        lb, ub = bf.compute_bounds(f, lo, hi, method=m if linear else "ibp")
                except UnsupportedOperation:
                    alt = f.vmapped_view() if linear else None
                    if alt is None:
                        raise
                    # not batch-first inside: the verifier bounds vmap's batch-first graph
                    lb, ub = bf.compute_bounds(alt, lo, hi, method=m)
                    row["batch_first"] = "vmap"
            tol = 1e-9 * (1 + y.abs().max())
            ok = bool(((y >= lb - tol) & (y <= ub + tol)).all())
            how = "" if linear else " (ibp: not batch-first)"
            if module.index_inputs:  # each case the model's value (a point) or the pinned model's bounds
                how = f" ({row['batch_first'].split('; ')[-1]})"
            row["bound"][m] = ("ok" if ok else "VIOLATED") + how
            row["width"][m] = float((ub - lb).mean())
        except deadline.DeadlineExceeded:
            row["bound"][m] = f"timeout ({bound_timeout:g} s)"
        except Exception as e:  # noqa: BLE001
            row["bound"][m] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        row["bound_s"][m] = time.monotonic() - t
    return row


def _folders(args) -> list[Path]:
    folders = [Path(f) for f in args.folders]
    for c in args.checkout:
        folders += sorted(p.parent for p in Path(c).glob("benchmarks/*/instances.csv"))
    return folders or sorted(p.parent for p in DEFAULT_ROOT.glob("*/instances.csv"))


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['benchmark']}/{Path(r['onnx']).name.split('.')[0][:18]}" for r in rows]
    secs = [float(r.get("seconds", 0.0)) for r in rows]
    colours = [
        "tab:green"
        if all(str(v).startswith("ok") for v in (r.get("bound") or {"-": "-"}).values())
        else "tab:orange"
        if r.get("import") == "ok"
        else "tab:red"
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(rows))))
    ax.barh(range(len(rows)), secs, color=colours)
    ax.set_yticks(range(len(rows)), names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (import, onnxruntime check, bounds)")
    ax.set_title("VNN-COMP networks: green bounded soundly, orange imported only, red not imported")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*")
    ap.add_argument("--checkout", action="append", default=[], help="a vnncomp20XX_benchmarks checkout")
    ap.add_argument("--methods", default="crown", help="comma-separated bound methods")
    ap.add_argument("--bound-timeout", type=float, default=60.0)
    ap.add_argument("--out", default="docs/benchmarks")
    ap.add_argument(
        "--update",
        action="store_true",
        help="re-measure only the given folders; keep the other benchmarks' rows of the existing table",
    )
    ap.add_argument("--one", nargs=2, metavar=("ONNX", "VNNLIB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods = args.methods.split(",")
    if args.one:
        import resource

        row = _one(args.one[0], args.one[1], methods, args.bound_timeout)
        row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        print(json.dumps(row))
        return
    nets = [n for folder in _folders(args) for n in _networks(folder)]
    rows = []
    from tqdm import tqdm

    for bench, onnx, vnnlib in tqdm(nets, desc="networks", unit="net"):
        cmd = [sys.executable, __file__, "--one", str(onnx), str(vnnlib), "--methods", args.methods]
        cmd += ["--bound-timeout", str(args.bound_timeout)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=args.bound_timeout * len(methods) + 300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        row = {"benchmark": bench, "onnx": str(onnx.relative_to(onnx.parents[1]))}
        try:
            row.update(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            row["import"] = f"process failed: {(err.strip().splitlines() or ['?'])[-1][:160]}"
        row["seconds"] = time.monotonic() - t0
        rows.append(row)
    out = Path(args.out)
    kept: list = []
    if args.update and (out / "vnncomp_coverage.json").exists():
        measured = {r["benchmark"] for r in rows}
        old_rows = json.loads((out / "vnncomp_coverage.json").read_text())["rows"]
        kept = [r for r in old_rows if r["benchmark"] not in measured]
        order = [r["benchmark"] for r in old_rows]
        rows = sorted(kept + rows, key=lambda r: order.index(r["benchmark"]) if r["benchmark"] in order else len(order))
    write_json(out / "vnncomp_coverage.json", {"args": vars(args), "environment": environment(), "rows": rows})
    _plot(rows, out / "vnncomp_coverage.png")
    cmd = "python benchmarks/vnncomp_coverage.py" + (f" --methods {args.methods}" if args.methods != "crown" else "")
    cmd += f" --bound-timeout {args.bound_timeout:g}" if args.bound_timeout != 60 else ""
    if args.update:
        cmd += " --update " + " ".join(str(f) for f in args.folders)
    lines = [
        "# VNN-COMP networks: import and bounds",
        "",
        f"Command: `{cmd}` (each network in its own process, 2 threads; bounds on the input box of "
        "the first property that names the network)"
        + (
            f"; the rows of {', '.join(sorted({r['benchmark'] for r in kept}))} are kept from the run before"
            if kept
            else ""
        ),
        "",
        "| benchmark | network | import | onnxruntime rel. diff | "
        + " | ".join(f"{m} bounds" for m in methods)
        + " | bound s | total s | peak MB |",
        "|---|---|---|---|" + "---|" * len(methods) + "---|---|---|",
    ]
    for r in rows:
        diff = r.get("ort_diff")
        diff = f"{diff:.1e}" if isinstance(diff, float) else (diff or "-")
        bounds = " | ".join(str((r.get("bound") or {}).get(m, "-")) for m in methods)
        bsec = sum((r.get("bound_s") or {}).values()) if r.get("bound_s") else None
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") else "-"
        lines.append(
            f"| {r['benchmark']} | {Path(r['onnx']).name} | {r['import']} | {diff} | {bounds} | "
            f"{'-' if bsec is None else f'{bsec:.1f}'} | {r['seconds']:.1f} | {peak} |"
        )
    n_ok = sum(r["import"] == "ok" for r in rows)
    n_bound = sum(all(str(v).startswith("ok") for v in (r.get("bound") or {"-": "-"}).values()) for r in rows)
    lines += [
        "",
        f"{n_ok} of {len(rows)} networks import; {n_bound} get sound bounds from every method "
        "(sampled and attacked outputs inside).",
        "",
        "![seconds per network](vnncomp_coverage.png)",
    ]
    write_text(out / "vnncomp_coverage.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
