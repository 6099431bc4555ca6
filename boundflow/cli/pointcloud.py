"""``boundflow certify-pointcloud``: certify a PointNet against a 3-D transformation range."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from boundflow.cli import options

__all__ = ["add_parser", "run"]


def add_parser(sub):
    p = sub.add_parser("certify-pointcloud", help="certify point-cloud classifiers against 3-D transformations")
    p.add_argument("--model", help="a PointNet state dict saved by this command (default: train one on the shapes)")
    p.add_argument("--data", help=".npz with points (M, N, 3) and labels (M,) (default: embedded shapes)")
    p.add_argument("--transform", default="rotation-z", help="e.g. rotation-z, twisting-z, tapering-z+rotation-x")
    p.add_argument("--theta", default="3deg", help="range: 3deg, 0.05rad, -2:5deg, 0.1 (unit-free coefficients)")
    p.add_argument("--splits", type=int, default=10, help="sub-ranges per parameter")
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        help="halve a sub-range that does not certify, up to this many times along any path (adaptive splits)",
    )
    p.add_argument(
        "--relaxation",
        default="taylor",
        choices=["taylor", "interval"],
        help="of the transformed points: a linear form in theta with a box remainder, or a box",
    )
    p.add_argument("--method", default="forward", help="linear-domain method for the network (forward, crown)")
    p.add_argument("--pool", default="max", choices=["max", "cascade"], help="how the global max pool is written")
    p.add_argument(
        "--maxpool",
        choices=["tight", "deeppoly"],
        help="max-pool relaxation: tight needs --method forward or crown (default: tight with forward, else deeppoly)",
    )
    options.count(p, "clouds", 24, "clouds to certify", old="--objects")
    options.count(p, "points", 64, "points per cloud (of the embedded shapes and the trained PointNet)", old="--points")
    options.seed(p)
    options.out(p, "runs/pointcloud", "folder for results.json, results.md, cloud.png (and model.pt)")
    options.no_progress(p)
    return p


def parse_theta(text: str) -> tuple[tuple[float, float], str]:
    """``"3deg"`` -> ((-3, 3), "deg"); ``"-2:5deg"`` -> ((-2, 5), "deg"); ``"0.1"`` -> ((-0.1, 0.1), "rad")."""
    m = re.fullmatch(r"\s*(-?[\d.eE+-]+)(?::(-?[\d.eE+-]+))?\s*(deg|rad)?\s*", text)
    if not m:
        raise ValueError(f"--theta {text!r}: expected forms like 3deg, 0.05rad, -2:5deg or 0.1")
    a = float(m.group(1))
    lo, hi = (-abs(a), abs(a)) if m.group(2) is None else (a, float(m.group(2)))
    return (lo, hi), m.group(3) or "rad"


def run(args) -> int:
    from boundflow.atomic import atomic_torch_save, atomic_write_text
    from boundflow.outputs import claim, record
    from boundflow.pointcloud import CLASSES, PointNet, certify, load_npz, make_shapes, train_pointnet
    from boundflow.pointcloud.plots import plot_cloud

    try:
        theta, unit = parse_theta(args.theta)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    from boundflow.pointcloud.transforms import parse as parse_transform

    checks = [
        (args.n_clouds >= 1, f"--n-clouds must be >= 1, got {args.n_clouds}"),
        (args.n_points >= 1, f"--n-points must be >= 1, got {args.n_points}"),
        (args.splits >= 1, f"--splits must be >= 1, got {args.splits}"),
        (args.refine >= 0, f"--refine must be >= 0, got {args.refine}"),
        (args.model is None or Path(args.model).is_file(), f"--model {args.model}: no such file"),
        (args.data is None or Path(args.data).is_file(), f"--data {args.data}: no such file"),
    ]
    for ok, msg in checks:
        if not ok:
            raise SystemExit(f"error: {msg}")
    try:
        parse_transform(args.transform)  # before any training
    except ValueError as e:
        raise SystemExit(f"error: --transform: {e}") from None
    import boundflow as bf

    try:
        bf.get_domain(args.method)
    except ValueError as e:
        raise SystemExit(f"error: --method: {e}") from None
    names = ["results.json", "results.md", "cloud.png"] + ([] if args.model else ["model.pt"])
    out = claim(args.out, names, force=getattr(args, "force", False))
    record(out, getattr(args, "argv", None))
    if args.model:
        state = torch.load(args.model, weights_only=True)
        model = PointNet(state.pop("_n_classes").item() if "_n_classes" in state else len(CLASSES)).double()
        model.load_state_dict(state)
    else:
        model, info = train_pointnet(n_points=args.n_points, seed=args.seed, progress=not args.no_progress)
        state = dict(model.state_dict())
        state["_n_classes"] = torch.tensor(len(CLASSES))
        atomic_torch_save(state, out / "model.pt")
        print(f"trained PointNet: train acc {info['train_accuracy']:.3f}, test acc {info['test_accuracy']:.3f}")
    model.pool = args.pool
    model.eval()
    if args.data:
        x, y = load_npz(args.data)
        if y is None:
            with torch.no_grad():
                y = model(x).argmax(1)  # certify the model's own predictions
    else:
        x, y = make_shapes(max(1, -(-args.n_clouds // len(CLASSES))), args.n_points, seed=args.seed + 20_000)
    x, y = x[: args.n_clouds], y[: args.n_clouds]
    res = certify(
        model, x, y, args.transform, theta, unit, args.splits, args.relaxation, args.method,
        progress=not args.no_progress, maxpool=args.maxpool, refine=args.refine,
    )  # fmt: skip
    rows = [
        {"object": i, "label": int(y[i]), "correct": c, "certified": k, "worst_margin": m, "seconds": s, "boxes": b}
        for i, (c, k, m, s, b) in enumerate(
            zip(res.correct, res.certified, res.worst_margin, res.seconds, res.boxes, strict=True)
        )
    ]
    summary = {
        "transform": args.transform,
        "theta": list(theta),
        "unit": unit,
        "splits": args.splits,
        "refine": args.refine,
        "relaxation": args.relaxation,
        "method": args.method,
        "pool": args.pool,
        "maxpool": res.maxpool,
        "accuracy": res.accuracy,
        "certified_fraction": res.certified_fraction,
        "seconds_per_object": sum(res.seconds) / max(len(res.seconds), 1),
        "objects": rows,
    }
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=float))
    lines = [
        f"# {args.transform} in {theta[0]:g}..{theta[1]:g} {unit}, {args.splits} splits"
        + (f" (refined up to {args.refine} times)" if args.refine else "")
        + f", {args.relaxation}, {res.maxpool} max pool",
        "",
        f"accuracy {res.accuracy:.3f}, certified {res.certified_fraction:.3f}, "
        f"{summary['seconds_per_object']:.2f} s per object",
        "",
        "| object | label | correct | certified | worst margin | sub-ranges bounded | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['object']} | {r['label']} | {r['correct']} | {r['certified']} | {r['worst_margin']:.3g} | "
            f"{r['boxes']} | {r['seconds']:.2f} |"
        )
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    first = next((i for i, k in enumerate(res.certified) if k), 0)
    plot_cloud(x[first], args.transform, res.theta_lower, res.theta_upper, out / "cloud.png",
               title=f"object {first} ({'certified' if res.certified[first] else 'not certified'})",
               unit=unit)  # fmt: skip
    print("\n".join(lines[:3]))
    print(f"wrote {out}/results.json, results.md, cloud.png")
    return 0
