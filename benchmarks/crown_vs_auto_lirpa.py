"""BoundFlow's CROWN against auto_LiRPA's CROWN on the same networks, inputs and radii: both
bounds side by side (is either looser, and by how much) and the time ratio, medians measured
in one run, interleaved.

    python benchmarks/crown_vs_auto_lirpa.py --auto-lirpa /path/to/auto_LiRPA [--repeats 7] [--out DIR]

auto_LiRPA is not a dependency: point ``--auto-lirpa`` (or ``AUTO_LIRPA``) at a checkout (the
folder holding the ``auto_LiRPA`` package; its own imports, e.g. ``appdirs``, must be
importable).  Without it the script says so and exits 0.

Both sides run with a model prepared once (auto_LiRPA's ``BoundedModule``; BoundFlow's
``boundflow.prepare``), so the times are of bounding, not of graph capture; the capture times
are reported separately.  Two more BoundFlow columns time the one-shot call a user makes in a
loop, ``boundflow.compute_bounds(model, lo, hi, method="crown")``: as it is (it reuses the
model it prepared while the model is unchanged) and with ``boundflow.clear_cache()`` before
every call (a fresh preparation and capture each time), both against the same auto_LiRPA
calls.  BoundFlow runs in the dtype given (float32 as auto_LiRPA does, and
float64, its default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json, write_text  # noqa: E402

import boundflow as bf  # noqa: E402
from boundflow.specs import Box  # noqa: E402


def networks() -> list[tuple[str, nn.Module, torch.Tensor, float]]:
    """(name, model, batch of inputs, eps): MLPs (ReLU, tanh, sigmoid), two CNNs (the second of
    CIFAR's input size), a deep MLP."""
    torch.manual_seed(0)

    def mlp(widths, act):
        mods = []
        for a, b in zip(widths[:-2], widths[1:-1]):
            mods += [nn.Linear(a, b), act()]
        return nn.Sequential(*mods, nn.Linear(widths[-2], widths[-1]))

    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    )
    cifar = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    return [
        ("MLP 64-32-32-10 ReLU b32", mlp([64, 32, 32, 10], nn.ReLU), torch.rand(32, 64), 0.03),
        ("MLP 64-32-32-10 tanh b32", mlp([64, 32, 32, 10], nn.Tanh), torch.rand(32, 64), 0.03),
        ("MLP 64-32-32-10 sigmoid b32", mlp([64, 32, 32, 10], nn.Sigmoid), torch.rand(32, 64), 0.03),
        ("CNN conv8-conv16s2-fc 16x16 b16", cnn, torch.rand(16, 1, 16, 16), 0.01),
        ("CNN conv16-conv32s2-conv32s2-fc100 3x32x32 b8", cifar, torch.rand(8, 3, 32, 32), 2 / 255),
        ("MLP 784-256-256-256-10 ReLU b32", mlp([784, 256, 256, 256, 10], nn.ReLU), torch.rand(32, 784), 0.01),
    ]


def _timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def compare(name, model, x, eps, dtype, repeats, alp) -> dict:
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    model = model.to(dtype).eval()
    x = x.to(dtype)
    lo, hi = x - eps, x + eps
    their_model, their_capture = _timed(lambda: BoundedModule(model, torch.zeros_like(x), verbose=False))
    ptb = PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi)

    def theirs():
        with torch.no_grad():
            return their_model.compute_bounds(x=(BoundedTensor(x, ptb),), method="CROWN")

    prepared = bf.prepare(model, "crown", dtype=dtype)
    spec = Box(lo, hi)
    (_, our_first) = _timed(lambda: prepared.bounds(spec))  # captures the graph for this batch shape

    def ours():
        with torch.no_grad():
            return prepared.bounds(spec)

    def one_shot():
        return bf.compute_bounds(model, lo, hi, method="crown", dtype=dtype)

    def uncached():
        bf.clear_cache()
        return bf.compute_bounds(model, lo, hi, method="crown", dtype=dtype)

    theirs(), ours(), one_shot()  # warm-up
    t_theirs, t_ours, t_one, t_fresh = [], [], [], []
    for _ in range(repeats):  # interleaved: all see the same machine state
        (tl, tu), s = _timed(theirs)
        t_theirs.append(s)
        b, s = _timed(ours)
        t_ours.append(s)
        o, s = _timed(one_shot)
        t_one.append(s)
        _, s = _timed(uncached)
        t_fresh.append(s)
    assert torch.equal(o[0], b.lower) and torch.equal(o[1], b.upper)  # the same bounds as the prepared model
    ol, ou = b.lower.to(torch.float64), b.upper.to(torch.float64)
    tl, tu = tl.detach().to(torch.float64), tu.detach().to(torch.float64)
    looser = torch.maximum(tl - ol, ou - tu)  # > 0 where BoundFlow's bound is the looser one
    width_ratio = float(((ou - ol).sum() / (tu - tl).sum()).item())
    return {
        "network": name,
        "dtype": str(dtype).replace("torch.", ""),
        "auto_lirpa_ms": statistics.median(t_theirs) * 1e3,
        "boundflow_ms": statistics.median(t_ours) * 1e3,
        "ratio": statistics.median(t_ours) / statistics.median(t_theirs),
        "one_shot_ms": statistics.median(t_one) * 1e3,
        "one_shot_ratio": statistics.median(t_one) / statistics.median(t_theirs),
        "uncached_ms": statistics.median(t_fresh) * 1e3,
        "uncached_ratio": statistics.median(t_fresh) / statistics.median(t_theirs),
        "auto_lirpa_capture_ms": their_capture * 1e3,
        "boundflow_first_call_ms": our_first * 1e3,
        "max_looser": float(looser.max().item()),
        "max_tighter": float((-looser).max().item()),
        "width_ratio": width_ratio,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--auto-lirpa", default=os.environ.get("AUTO_LIRPA"), help="folder holding the auto_LiRPA package")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default=None, help="run only the networks whose name contains this")
    ap.add_argument("--out", default=None, help="write crown_vs_auto_lirpa.json and .md here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.auto_lirpa:
        sys.path.insert(0, args.auto_lirpa)
    try:
        import auto_LiRPA
    except ImportError as e:
        print(f"skipped: auto_LiRPA is not importable ({e}); pass --auto-lirpa PATH to a checkout")
        return
    import warnings

    warnings.filterwarnings("ignore")
    rows = []
    for name, model, x, eps in networks():
        if args.only and args.only not in name:
            continue
        for dtype in (torch.float32, torch.float64):
            try:
                r = compare(name, model, x, eps, dtype, args.repeats, auto_LiRPA)
            except Exception as e:  # auto_LiRPA's own limits (e.g. tanh in float64) are reported, not hidden
                msg = str(e).splitlines()[0][:120]
                print(f"{name:<34} {str(dtype).replace('torch.', ''):<8} not compared: {type(e).__name__}: {msg}")
                rows.append({"network": name, "dtype": str(dtype).replace("torch.", ""), "error": msg})
                continue
            rows.append(r)
            print(
                f"{r['network']:<34} {r['dtype']:<8} auto_LiRPA {r['auto_lirpa_ms']:8.2f} ms  BoundFlow "
                f"{r['boundflow_ms']:8.2f} ms  ratio {r['ratio']:5.2f}x  one-shot {r['one_shot_ratio']:5.2f}x  "
                f"uncached {r['uncached_ratio']:5.2f}x  width ratio {r['width_ratio']:.6f}  "
                f"max looser {r['max_looser']:.2e}",
                flush=True,
            )
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    one = [r["one_shot_ratio"] for r in rows if "ratio" in r]
    print(f"median time ratio BoundFlow / auto_LiRPA: {statistics.median(ratios):.2f}x (target <= 1.0x)")
    print(
        f"one-shot compute_bounds / auto_LiRPA: median {statistics.median(one):.2f}x, "
        f"max {max(one):.2f}x (target <= 1.2x)"
    )
    if args.out:
        env = environment() | {"auto_lirpa": getattr(auto_LiRPA, "__version__", "?"), "repeats": args.repeats}
        write_json(Path(args.out) / "crown_vs_auto_lirpa.json", {"rows": rows, "environment": env})
        lines = [
            "# CROWN: BoundFlow against auto_LiRPA",
            "",
            f"Command: `python benchmarks/crown_vs_auto_lirpa.py --auto-lirpa PATH --repeats {args.repeats}"
            f" --out {args.out}`; auto_LiRPA {env['auto_lirpa']}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; medians of {args.repeats} interleaved calls on a model prepared once.",
            "",
            "| network | dtype | auto_LiRPA ms | BoundFlow ms | ratio | one-shot ms | one-shot ratio "
            "| uncached ratio | width ratio | max looser | max tighter |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['network']} | {r['dtype']} | not compared: {r['error']} | | | | | | | | |")
                continue
            lines.append(
                f"| {r['network']} | {r['dtype']} | {r['auto_lirpa_ms']:.2f} | {r['boundflow_ms']:.2f} | "
                f"{r['ratio']:.2f}x | {r['one_shot_ms']:.2f} | {r['one_shot_ratio']:.2f}x | "
                f"{r['uncached_ratio']:.2f}x | "
                f"{r['width_ratio']:.6f} | {r['max_looser']:.2e} | {r['max_tighter']:.2e} |"
            )
        lines += [
            "",
            f"Median ratio {statistics.median(ratios):.2f}x prepared, {statistics.median(one):.2f}x one-shot "
            f"(max {max(one):.2f}x).",
        ]
        write_text(Path(args.out) / "crown_vs_auto_lirpa.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
